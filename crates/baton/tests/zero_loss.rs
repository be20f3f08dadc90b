//! The promise: switches lose no request. Real `baton serve`, real app
//! processes, 64 keep-alive clients, 20 deploys in a row.

mod support;

use std::time::Duration;

use support::*;

fn service(extra: &str) -> String {
    format!(
        "[services.web]\ncommand = {}\ninstances = 2\n\
         [services.web.health]\ninterval = \"100ms\"\ndeadline = \"20s\"\n\
         [services.web.switch]\nkeep_previous = \"0s\"\n{extra}",
        sample_app(&["--unhealthy-for", "2s", "--drain-timeout", "0s"])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deploys_under_keep_alive_load_lose_nothing() {
    let mut b = Baton::new(&service(""));
    b.start();
    cli_async(&b, &["deploy", "web", "v0"]).await;
    let versions: Vec<&str> = (1..=20)
        .map(|i| if i % 2 == 1 { "v1" } else { "v2" })
        .collect();
    deploys_under_load(&b, "web", &versions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_the_switch_completes_on_the_old_version() {
    let mut b = Baton::new(&service("drain_timeout = \"30s\"\n"));
    b.start();
    cli_async(&b, &["deploy", "web", "v1"]).await;
    let slow_url = b.url("/slow?ms=10000");
    let slow = tokio::spawn(async move { baton_loadgen::get_once(&slow_url, None).await });
    wait_in_flight(&b, 1).await;

    cli_async(&b, &["deploy", "web", "v2"]).await;
    assert_eq!(
        baton_loadgen::get_once(&b.url("/"), None)
            .await
            .unwrap()
            .1
            .trim(),
        "version=v2"
    );
    let status = b.status("web");
    assert_eq!(status["previous"]["state"], "draining", "{status}");

    let (code, body) = slow.await.unwrap().unwrap();
    assert_eq!((code, body.trim()), (200, "version=v1"));
    // Then, and only then, the old release is stopped.
    wait_for_status(&b, "the previous release to be stopped", |s| {
        s["previous"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_switch_and_is_closed_with_a_close_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::frame::coding::CloseCode, Message};

    let mut b = Baton::new(&service("drain_timeout = \"3s\"\n"));
    b.start();
    cli_async(&b, &["deploy", "web", "v1"]).await;
    let blue_pids = b.app_pids("v1");
    assert_eq!(blue_pids.len(), 2, "two v1 instances");

    let url = format!("ws://127.0.0.1:{}/ws", b.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("v1:before")
    );

    cli_async(&b, &["deploy", "web", "v2"]).await;
    let switched = std::time::Instant::now();
    // Still talking to blue after the switch.
    for i in 0..5 {
        ws.send(Message::text(format!("after-{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("v1:after-{i}"))
        );
        assert!(
            blue_pids.iter().all(|p| pid_alive(*p)),
            "blue stopped while its WebSocket was open"
        );
    }
    // At the drain timeout: a close frame, not a reset.
    let closing = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .unwrap();
    match closing {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(
        switched.elapsed() >= Duration::from_secs(2),
        "closed before the drain timeout"
    );
    // Then blue is stopped, the whole of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while blue_pids.iter().any(|p| pid_alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "blue still running after its drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_in_flight(b: &Baton, n: u64) {
    wait_for_status(b, "a request in flight", |s| {
        s["active"]["targets"].as_array().is_some_and(|t| {
            t.iter()
                .map(|t| t["in_flight"].as_u64().unwrap_or(0))
                .sum::<u64>()
                >= n
        })
    })
    .await;
}

async fn wait_for_status(b: &Baton, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = b.status("web");
        if cond(&s) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
