//! The control API: HTTP/JSON on a unix socket, what every CLI command talks to.
//!
//! Deploys and rollbacks answer with a stream of JSON lines (progress events,
//! then one result), so a CI log shows each step as it happens. The deploy
//! itself runs in its own task: a client that goes away does not abort it
//! half-way.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_orchestrator::{Command, DeployError, Orchestrator, Progress, Request};
use baton_store::DeployRecord;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::exit;

/// One line of a deploy's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeployEvent {
    Progress(Progress),
    Result(Outcome),
}

/// How a deploy or rollback ended.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// The exit code the CLI should end with.
    pub code: u8,
    pub error: Option<String>,
    pub deploy: Option<DeployRecord>,
}

#[derive(Debug, Deserialize)]
struct RollbackBody {
    to: Option<String>,
    requested_by: String,
}

#[derive(Debug, Deserialize)]
struct ShutdownBody {
    stop_apps: bool,
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// What the handlers share.
pub struct ApiState {
    pub orchestrator: Arc<Orchestrator>,
    /// Asks `serve` to exit; `true` means stop the apps first.
    pub shutdown: mpsc::UnboundedSender<bool>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services/{service}/history", get(history))
        .route("/v1/services/{service}/deploy", post(deploy))
        .route("/v1/services/{service}/rollback", post(rollback))
        .route("/v1/services/{service}/rollout", post(rollout))
        .route("/v1/shutdown", post(shutdown))
        .with_state(state)
}

fn error_response(e: &DeployError) -> Response {
    let status = match e {
        DeployError::UnknownService(_) => StatusCode::NOT_FOUND,
        DeployError::NoRollout { .. } => StatusCode::CONFLICT,
        DeployError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn status(State(s): State<Arc<ApiState>>, Query(q): Query<StatusQuery>) -> Response {
    match s.orchestrator.status(q.service.as_deref()) {
        Ok(st) => Json(st).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn history(
    State(s): State<Arc<ApiState>>,
    Path(service): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    match s.orchestrator.history(&service, q.limit.unwrap_or(20)) {
        Ok(h) => Json(h).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn deploy(
    State(s): State<Arc<ApiState>>,
    Path(service): Path<String>,
    Json(req): Json<Request>,
) -> Response {
    stream_deploy(
        move |progress| async move { s.orchestrator.deploy(&service, &req, progress).await },
    )
}

async fn rollback(
    State(s): State<Arc<ApiState>>,
    Path(service): Path<String>,
    Json(body): Json<RollbackBody>,
) -> Response {
    stream_deploy(move |progress| async move {
        s.orchestrator
            .rollback(&service, body.to.as_deref(), &body.requested_by, progress)
            .await
    })
}

/// `promote`, `pause`, `resume`, `abort`: a command to the running rollout.
async fn rollout(
    State(s): State<Arc<ApiState>>,
    Path(service): Path<String>,
    Json(command): Json<Command>,
) -> Response {
    match s.orchestrator.command(&service, command) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error_response(&e),
    }
}

async fn shutdown(State(s): State<Arc<ApiState>>, Json(body): Json<ShutdownBody>) -> StatusCode {
    let _ = s.shutdown.send(body.stop_apps);
    StatusCode::ACCEPTED
}

/// Runs a deploy in its own task and streams its events as JSON lines.
fn stream_deploy<F, Fut>(work: F) -> Response
where
    F: FnOnce(mpsc::UnboundedSender<Progress>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<DeployRecord, DeployError>> + Send,
{
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let (lines_tx, lines_rx) = mpsc::unbounded_channel::<DeployEvent>();
    tokio::spawn(async move {
        let forward = lines_tx.clone();
        let relay = tokio::spawn(async move {
            while let Some(p) = progress_rx.recv().await {
                let _ = forward.send(DeployEvent::Progress(p));
            }
        });
        let result = work(progress_tx).await;
        let _ = relay.await;
        let _ = lines_tx.send(DeployEvent::Result(outcome(result)));
    });
    let body = stream::unfold(lines_rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn outcome(result: Result<DeployRecord, DeployError>) -> Outcome {
    match result {
        Ok(record) => Outcome {
            ok: true,
            code: 0,
            error: None,
            deploy: Some(record),
        },
        Err(e) => {
            let code = match &e {
                DeployError::Failed(_) => exit::FAILED,
                DeployError::Busy { .. } => exit::BUSY,
                DeployError::UnknownService(_)
                | DeployError::NothingToRollBack { .. }
                | DeployError::NoRollout { .. }
                | DeployError::Refused(_) => exit::BAD_INPUT,
                DeployError::Store(_) => exit::FAILED,
            };
            let deploy = match e {
                DeployError::Failed(ref record) => Some(record.as_ref().clone()),
                _ => None,
            };
            Outcome {
                ok: false,
                code,
                error: Some(e.to_string()),
                deploy,
            }
        }
    }
}
