//! `baton-bench sink`: the backend of the upload scenario.
//!
//! An HTTP/1.1 server on one thread (like a one-worker nginx) that reads every
//! request body to the end before it answers `200 ok` with the byte count.
//! nginx's `return 200` answers before it has read the body, which is not
//! what an upload handler does, and which a proxy streaming the body may
//! rightly punish by closing the client connection.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (baton sets PORT for the apps it starts).
    #[arg(long, env = "PORT")]
    port: u16,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, text) = match request.into_body().collect().await {
        Ok(body) => (StatusCode::OK, format!("ok {}\n", body.to_bytes().len())),
        Err(e) => (StatusCode::BAD_REQUEST, format!("body: {e}\n")),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    Ok(response)
}
