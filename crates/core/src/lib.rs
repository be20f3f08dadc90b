//! baton's domain, free of I/O: services run releases in one of two colors,
//! and a deploy moves a service from one release to the next through a state
//! machine that is a pure function of events.
//!
//! Everything that touches processes, sockets or disk lives elsewhere and
//! drives these types; keeping them pure is what lets every transition be
//! tested exhaustively.

pub mod canary;
mod color;
mod deploy;

pub use canary::{Inconclusive, Pause, Plan, Rollout, Step, Sticky, Verdict, Weight};
pub use color::Color;
pub use deploy::{Action, Deploy, DeployKind, Event, Phase};
