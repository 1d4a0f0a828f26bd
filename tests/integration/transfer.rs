//! Large bodies stream through in both directions with bounded memory.

use crate::harness::{Req, Stack};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const GIB: u64 = 1 << 30;
const UPLOAD: u64 = 2 << 30;
const RSS_LIMIT: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_download_and_two_gib_upload_in_bounded_memory() {
    let s = Stack::start().await;
    let c = s.client();
    let outside = Req {
        from: Some("127.0.0.2".parse().unwrap()),
        ..Req::default()
    };

    // Download: count and spot-check every byte against the generator.
    let req = http::Request::get("/records/big/files/1G.bin")
        .header("host", "store.localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = c.send_streaming(&outside, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
    let mut body = resp.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert_eq!(d[0], ((n % 251) as u8), "byte {n}");
            n += d.len() as u64;
        }
    }
    assert_eq!(n, GIB);
    let after_download = s.peak_rss();

    // Upload: a generated 2 GiB stream to the deposit route (50 GiB limit), counted by the
    // stand-in.
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let chunks = futures_util::stream::iter((0..UPLOAD / chunk.len() as u64).map(move |_| {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))
    }));
    let req = http::Request::put("/api/records/big/draft/files/upload.bin/content")
        .header("host", "data.localhost")
        .body(StreamBody::new(chunks))
        .unwrap();
    let resp = c.send_streaming(&Req::default(), req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["received"], UPLOAD);
    let peak = s.peak_rss();
    eprintln!(
        "peak RSS of the proxy: after 1 GiB download {} KiB; after 2 GiB upload {} KiB",
        after_download / 1024,
        peak / 1024
    );
    assert!(peak < RSS_LIMIT, "proxy peak RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_pass_through() {
    let s = Stack::start().await;
    let c = s.client();
    let req = http::Request::get("/records/a/files/1M.bin")
        .header("host", "store.localhost")
        .header("range", "bytes=1000-1009")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(&Req::default(), req).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 1000-1009/1048576");
    assert_eq!(
        r.body.to_vec(),
        (1000..1010).map(|i| (i % 251) as u8).collect::<Vec<_>>()
    );
}
