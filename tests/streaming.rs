//! Streaming drills: a 1 GiB download and a 1 GiB upload through stickgate,
//! with the balancer's memory staying flat. What arrives is checked as far
//! as the demo node allows: the download's length and every byte (each must
//! be the node's `.` filler, so no framing or foreign bytes leak in; a
//! constant filler cannot show reordered chunks), the upload's length as
//! the node counted it (it does not hash what it receives).
mod common;
use common::*;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One transfer at a time: throughput and RSS figures are per transfer.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GIB: u64 = 1 << 30;
/// Most the balancer's RSS may grow over its idle baseline while streaming:
/// growth measured here is 0.9-3.1 MiB, so this leaves a 2.5x margin,
/// while a balancer buffering the stalled quarter would grow by hundreds.
const MAX_GROWTH_KIB: u64 = 8 * 1024;
/// Give up on a transfer after this long (a stall must fail, not hang).
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);

const CHUNK: usize = 64 * 1024;
static FILL: [u8; CHUNK] = [b'u'; CHUNK];

/// A request body of `remaining` bytes generated on the fly from one static
/// chunk: nothing near 1 GiB is ever held in memory. `produced` counts the
/// bytes handed to the client library (so a test can see backpressure), and
/// `pace` (if set) sleeps before each chunk (a slow client).
struct Generated {
    remaining: u64,
    produced: Arc<AtomicU64>,
    pace: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl Generated {
    fn new(len: u64) -> Generated {
        Generated {
            remaining: len,
            produced: Arc::new(AtomicU64::new(0)),
            pace: None,
        }
    }

    fn paced(len: u64, every: Duration) -> Generated {
        Generated {
            pace: Some((every, Box::pin(tokio::time::sleep(every)))),
            ..Generated::new(len)
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some((every, sleep)) = &mut this.pace {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + *every;
            sleep.as_mut().reset(next);
        }
        let n = this.remaining.min(CHUNK as u64) as usize;
        this.remaining -= n as u64;
        this.produced.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Samples a process's RSS every 100 ms on a thread until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            p.fetch_max(rss_kib(pid), Ordering::Relaxed);
            samples
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stop; (peak RSS KiB, samples taken).
    fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.thread.take().unwrap().join().unwrap();
        (self.peak.load(Ordering::Relaxed), n)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Idle RSS of the balancer after one small warm-up exchange.
async fn idle_baseline(gate: &Gate) -> u64 {
    let r = get(&gate.url("/download?bytes=1048576"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1 << 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_kib(gate.proc.pid());
    assert!(rss > 0, "cannot read stickgate's RSS");
    rss
}

/// Print the figures; `took` excludes the deliberate stall.
fn report(what: &str, bytes: u64, took: Duration, baseline: u64, peak: u64, samples: usize) {
    eprintln!(
        "{what}: {} MiB in {:.1} s (stall excluded) = {:.0} MiB/s; stickgate RSS idle {} KiB, peak {} KiB, growth {:.1} MiB ({samples} samples)",
        bytes >> 20,
        took.as_secs_f64(),
        (bytes >> 20) as f64 / took.as_secs_f64(),
        baseline,
        peak,
        peak.saturating_sub(baseline) as f64 / 1024.0
    );
}

/// How long each drill stalls one side of the transfer, so a balancer that
/// buffered instead of applying backpressure would show it in RSS.
const STALL: Duration = Duration::from_millis(1500);

/// Moderate health checks: a backend stopped for `STALL` stays up.
const CALM_HEALTH: &str = "[health]\ninterval = \"2s\"\ntimeout = \"1s\"\nfall = 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_in_flat_memory() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!("{CALM_HEALTH}{}", node.toml()));
    let baseline = idle_baseline(&gate).await;

    let sampler = RssSampler::start(gate.proc.pid());
    let t = Instant::now();
    let transfer = async {
        let c = client();
        let req = http::Request::get(gate.url(&format!("/download?bytes={GIB}")))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let res = c.request(req).await.expect("download request");
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()),
            Some(GIB.to_string().as_str())
        );
        let mut body = res.into_body();
        let mut got = 0u64;
        let mut foreign = 0u64;
        let mut stalled = false;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("download body").data_ref() {
                got += d.len() as u64;
                foreign += d.iter().filter(|&&b| b != b'.').count() as u64;
            }
            // A slow reader for a while: stickgate must stop reading from
            // the backend rather than buffer what the client cannot take.
            if !stalled && got >= GIB / 4 {
                stalled = true;
                tokio::time::sleep(STALL).await;
            }
        }
        (got, foreign)
    };
    let (got, foreign) = tokio::time::timeout(TRANSFER_LIMIT, transfer)
        .await
        .expect("download stalled");
    let took = t.elapsed();
    let (peak, samples) = sampler.finish();
    report("download", got, took - STALL, baseline, peak, samples);
    assert_eq!(got, GIB, "download byte count");
    assert_eq!(
        foreign, 0,
        "bytes other than the node's filler in the download"
    );
    assert!(samples >= 10, "transfer too short to sample");
    assert!(
        peak.saturating_sub(baseline) <= MAX_GROWTH_KIB,
        "stickgate RSS grew {} KiB over its {} KiB baseline",
        peak - baseline,
        baseline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_in_flat_memory() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!("{CALM_HEALTH}{}", node.toml()));
    let baseline = idle_baseline(&gate).await;

    let sampler = RssSampler::start(gate.proc.pid());
    let t = Instant::now();
    let body = Generated::new(GIB);
    let produced = body.produced.clone();
    let url = gate.url("/upload");
    let transfer = tokio::spawn(async move {
        let c: Client<HttpConnector, Generated> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = http::Request::post(url).body(body).unwrap();
        let res = c.request(req).await.expect("upload request");
        let status = res.status();
        let body = res.into_body().collect().await.expect("upload answer");
        (status, body.to_bytes())
    });
    // Freeze the backend for a while once a quarter is through: stickgate
    // must stop reading the client's body instead of buffering it.
    let quarter_deadline = Instant::now() + Duration::from_secs(60);
    while produced.load(Ordering::Relaxed) < GIB / 4 && Instant::now() < quarter_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kernel socket buffers on both hops (autotuned, tens of MiB here) fill
    // first; measure what the client can still push after that.
    node.proc.signal("STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_stop = produced.load(Ordering::Relaxed);
    tokio::time::sleep(STALL - Duration::from_millis(500)).await;
    let during_stop = produced.load(Ordering::Relaxed) - at_stop;
    node.proc.signal("CONT");
    let (status, body) = tokio::time::timeout(TRANSFER_LIMIT, transfer)
        .await
        .expect("upload stalled")
        .expect("upload task");
    let took = t.elapsed();
    let (peak, samples) = sampler.finish();
    assert_eq!(status, 200, "{body:?}");
    let j: serde_json::Value = serde_json::from_slice(&body).expect("upload JSON");
    report(
        "upload",
        j["bytes"].as_u64().unwrap_or(0),
        took - STALL,
        baseline,
        peak,
        samples,
    );
    eprintln!(
        "upload: client pushed {} KiB in the last second of the backend's stop (after {} MiB)",
        during_stop >> 10,
        at_stop >> 20
    );
    assert_eq!(j["route"], "tomcat1");
    assert_eq!(j["bytes"], GIB, "upload byte count");
    assert!(samples >= 10, "transfer too short to sample");
    assert!(
        (GIB / 4..GIB).contains(&at_stop),
        "the backend was not stopped mid-upload ({at_stop} bytes sent)"
    );
    assert!(
        during_stop < 64 << 20,
        "the client could push {during_stop} bytes into a stopped backend: no backpressure"
    );
    assert!(
        peak.saturating_sub(baseline) <= MAX_GROWTH_KIB,
        "stickgate RSS grew {} KiB over its {} KiB baseline",
        peak - baseline,
        baseline
    );
}

/// `response_timeout` bounds the wait for an answer once the request is
/// sent; a client still uploading is not an unanswering backend. An upload
/// that takes longer than the timeout must not be cut (nor get the backend
/// marked down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_outlasting_response_timeout_is_not_cut() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "[upstream]\nresponse_timeout = \"1s\"\n{CALM_HEALTH}{}",
        node.toml()
    ));
    const CHUNKS: u64 = 25;
    let body = Generated::paced(CHUNKS * CHUNK as u64, Duration::from_millis(100));
    let c: Client<HttpConnector, Generated> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(gate.url("/upload")).body(body).unwrap();
    let t = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .expect("slow upload hung")
        .expect("slow upload request");
    let status = res.status();
    let body = res.into_body().collect().await.expect("answer").to_bytes();
    let took = t.elapsed();
    eprintln!(
        "slow upload: {} KiB over {:.1} s with response_timeout 1s -> {status} {:?}",
        (CHUNKS * CHUNK as u64) >> 10,
        took.as_secs_f64(),
        String::from_utf8_lossy(&body)
    );
    let health = gate.health("tomcat1").await;
    assert_eq!(status, 200, "upload cut: {body:?}");
    let j: serde_json::Value = serde_json::from_slice(&body).expect("upload JSON");
    assert_eq!(j["bytes"], CHUNKS * CHUNK as u64);
    assert!(
        took >= Duration::from_secs(2),
        "the upload was not slow: {took:?}"
    );
    assert_eq!(health, "up", "a slow client got the backend marked down");
}

/// A request body that sends `before` bytes, goes silent for `stall` (a
/// client on a bad link), then sends `after` bytes.
struct Stalling {
    before: u64,
    after: u64,
    stall: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let left = if this.before > 0 {
            &mut this.before
        } else {
            if let Some(d) = this.stall.take() {
                this.sleep = Some(Box::pin(tokio::time::sleep(d)));
            }
            if let Some(s) = &mut this.sleep {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            &mut this.after
        };
        if *left == 0 {
            return Poll::Ready(None);
        }
        let n = (*left).min(CHUNK as u64) as usize;
        *left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.before + self.after)
    }
}

/// A client that pauses mid-upload for longer than `response_timeout` is
/// the client's problem, not the backend's: the backend is waiting for the
/// body. The upload must complete (200) and the backend must stay up —
/// otherwise any client can take healthy nodes out of rotation at will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalling_mid_upload_does_not_mark_backend_down() {
    let _serial = SERIAL.lock().await;
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "[upstream]\nresponse_timeout = \"1s\"\n{CALM_HEALTH}{}{}",
        b1.toml(),
        b2.toml()
    ));
    const HALF: u64 = 256 * 1024;
    let c: Client<HttpConnector, Stalling> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(gate.url("/upload"))
        .body(Stalling {
            before: HALF,
            after: HALF,
            stall: Some(Duration::from_millis(2500)),
            sleep: None,
        })
        .unwrap();
    let t = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .expect("stalling upload hung");
    let took = t.elapsed();
    let s = gate.status().await;
    let down: Vec<String> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["health"] != "up")
        .map(|b| b["route"].as_str().unwrap().to_owned())
        .collect();
    let (status, body) = match res {
        Ok(r) => {
            let st = r.status();
            let b = r.into_body().collect().await.expect("answer").to_bytes();
            (Some(st), b)
        }
        Err(e) => (None, Bytes::from(format!("{e:?}"))),
    };
    eprintln!(
        "stalling upload: 2.5 s client pause with response_timeout 1s -> {status:?} {body:?} after {:.1} s; backends down: {down:?}",
        took.as_secs_f64()
    );
    assert!(
        down.is_empty(),
        "a client pausing its upload got {down:?} marked down (answer {status:?} {body:?})"
    );
    assert_eq!(status, Some(http::StatusCode::OK), "{body:?}");
    let j: serde_json::Value = serde_json::from_slice(&body).expect("upload JSON");
    assert_eq!(j["bytes"], 2 * HALF);
}
