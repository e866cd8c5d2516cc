//! The HTML status page at the admin root, driven by a real headless
//! Chromium over the Chrome DevTools Protocol: it renders one row per
//! backend, its Drain button changes the state through the admin API and the
//! page re-renders it, and it loads nothing from anywhere but the admin
//! listener (no external assets).
//!
//! After traffic and a drain it also checks the trends: sparklines with
//! points, the drain bar's remaining count, the event timeline, and that the
//! page fits 1280x900 and 390x844 (stacked cards) without horizontal
//! scrolling, in light and dark mode. Screenshots of each go to an artefact
//! directory (`STICKGATE_ARTEFACTS`, default `$TMPDIR/stickgate-status-page`,
//! overwritten by every run, never committed); the test prints its path.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `scripts/test.sh`
//! installs it). `STICKGATE_STATUS_SCREENSHOT=/tmp/x.png` saves a screenshot
//! of the page after the drain.
mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Bound of every wait in this drill.
const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium in its own process group, killed (the whole group:
/// browser, renderer, zygote) and its profile dir removed when dropped.
struct Chromium {
    proc: Proc,
    profile: PathBuf,
    /// `ws://127.0.0.1:PORT/devtools/browser/...`
    ws_url: String,
}

impl Chromium {
    fn start() -> Chromium {
        let bin = ["/usr/bin/chromium", "chromium", "chromium-browser"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("no chromium: `apt-get install chromium` (scripts/test.sh does)");
        let profile = tempdir();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1600,700",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let mut browser = Chromium {
            proc: Proc { child },
            profile,
            ws_url: String::new(),
        };
        // Read stderr on a thread until the DevTools line, then keep draining
        // it so Chromium never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sent {
                    continue;
                }
                if let Some(i) = line.find("ws://") {
                    let _ = tx.send(Ok(line[i..].trim().to_owned()));
                    sent = true;
                } else {
                    seen.push_str(&line);
                    seen.push('\n');
                }
            }
            if !sent {
                let _ = tx.send(Err(seen));
            }
        });
        browser.ws_url = match rx.recv_timeout(WAIT) {
            Ok(Ok(url)) => url,
            Ok(Err(out)) => panic!("chromium exited without a DevTools URL:\n{out}"),
            Err(_) => panic!("chromium printed no `DevTools listening on ws://` within {WAIT:?}"),
        };
        browser
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.pid())])
            .stderr(Stdio::null())
            .status();
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One CDP connection to the browser, attached to one page target in flat
/// mode (commands carry the `sessionId`). Events read while waiting for a
/// reply are kept in `events`.
struct Cdp {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
    events: Vec<Value>,
}

impl Cdp {
    /// Connect to the browser endpoint and open + attach a new page.
    async fn open_page(browser: &Chromium) -> Cdp {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&browser.ws_url))
            .await
            .expect("CDP connect timed out")
            .expect("CDP connect");
        let mut cdp = Cdp {
            ws,
            next_id: 0,
            session: None,
            events: Vec::new(),
        };
        let target = cdp
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = cdp
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp
    }

    /// Send one command and wait (bounded) for its reply's `result`.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .unwrap_or_else(|e| panic!("CDP send {method}: {e}"));
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("CDP {method}: no reply within {WAIT:?}"));
            let Some(Ok(frame)) = next else {
                panic!("CDP connection closed while waiting for {method}: {next:?}");
            };
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("CDP JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("CDP {method} failed: {err}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Read events for `d` (no command outstanding).
    async fn pump(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout_at(end, self.ws.next()).await
        {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v.get("method").is_some() {
                    self.events.push(v);
                }
            }
        }
    }

    /// Read events until one named `method` arrives (bounded); returns it.
    async fn wait_event(&mut self, method: &str) -> Value {
        let seen = self.events.len();
        let end = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.events[seen..].iter().find(|e| e["method"] == method) {
                return e.clone();
            }
            assert!(
                Instant::now() < end,
                "no CDP event {method} within {WAIT:?}"
            );
            self.pump(Duration::from_millis(100)).await;
        }
    }

    /// `Runtime.evaluate` by value; panics on a JavaScript exception.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("JavaScript exception in {expr:?}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Poll `expr` every 100 ms until `ok` holds for its value; panics with
    /// `what` and the last value after `WAIT`.
    async fn wait_eval(&mut self, expr: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let v = self.eval(expr).await;
            if ok(&v) {
                return v;
            }
            if Instant::now() > end {
                panic!("status page: {what} not seen within {WAIT:?}; last value of {expr:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// URLs of every `Network.requestWillBeSent` seen so far.
    fn request_urls(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str())
            .map(str::to_owned)
            .collect()
    }

    /// Uncaught exceptions the page threw.
    fn exceptions(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Runtime.exceptionThrown")
            .map(|e| e["params"]["exceptionDetails"].to_string())
            .collect()
    }
}

/// Where the screenshots go: kept after the run for a person to look at.
fn artefact_dir() -> PathBuf {
    let dir = std::env::var_os("STICKGATE_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("stickgate-status-page"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Cdp {
    /// Save a PNG of the viewport as `dir/name`.
    async fn screenshot(&mut self, dir: &std::path::Path, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    /// Emulate a `width` x `height` screen (`mobile`: honour the viewport
    /// meta tag, as a phone does) and wait until the page has laid out at
    /// that width.
    async fn resize(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        // A phone widens the layout viewport to fit a page wider than the
        // screen, so a wider innerWidth already means horizontal overflow.
        let what = format!("a {width} px wide viewport (wider: the page does not fit the screen)");
        self.wait_eval("window.innerWidth", &what, |v| {
            v.as_u64() == Some(u64::from(width))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Assert that nothing scrolls sideways: not the page, and not the
    /// table's box (which would hide a too-wide table inside the page).
    async fn assert_fits(&mut self, what: &str) {
        let v = self
            .eval(
                "(function(){var d=document.documentElement,w=document.querySelector('.wrap');\
                 return {doc:d.scrollWidth,inner:window.innerWidth,wrap:w.scrollWidth,wrapClient:w.clientWidth}})()",
            )
            .await;
        let n = |k: &str| v[k].as_u64().unwrap();
        assert!(
            n("doc") <= n("inner"),
            "{what}: document.documentElement.scrollWidth {} > window.innerWidth {}",
            n("doc"),
            n("inner")
        );
        assert!(
            n("wrap") <= n("wrapClient"),
            "{what}: the backends table scrolls sideways inside its box: {v}"
        );
    }
}

/// Points drawn by the sparkline `series` of `route` (0 without one).
fn spark_points(route: &str, series: &str) -> String {
    format!(
        "(function(){{var s=document.querySelector('#backends tr[data-route={route}] svg.spark[data-series={series}]');\
         if(!s)return {{points:0,max:0,lines:0}};\
         var p=s.querySelector('polyline');\
         return {{points:Number(s.getAttribute('data-points')),max:Number(s.getAttribute('data-max')),\
         lines:p?p.getAttribute('points').trim().split(/\\s+/).length:0}}}})()"
    )
}

fn row_text(route: &str) -> String {
    format!(
        "(document.querySelector('#backends tr[data-route={route}]') || {{}}).textContent || ''"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_and_drains_in_headless_chromium() {
    let started = Instant::now();
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    // A history point every second (the body continues [admin]).
    let mut gate = Gate::start(&format!(
        "history_interval = \"1s\"\n{FAST_HEALTH}{}{}",
        b1.toml(),
        b2.toml()
    ));
    gate.wait_health("tomcat1", "up").await;
    gate.wait_health("tomcat2", "up").await;
    let base = format!("http://127.0.0.1:{}/", gate.admin_port);

    // The admin root serves the page itself.
    let page = get(&base, None).await;
    assert_eq!(page.status, 200, "GET / on the admin listener");
    let html = String::from_utf8_lossy(&page.body).into_owned();
    assert!(
        html.contains("<title>stickgate status</title>") && html.contains("id=\"backends\""),
        "GET / is not the status page: {}",
        &html[..html.len().min(300)]
    );

    // Some traffic, so the counters are not all zero.
    let c = client();
    let mut id = None;
    for _ in 0..6 {
        let r = hit(&c, &gate, id.as_deref()).await;
        assert_eq!(r.status, 200);
        id = id.or_else(|| r.set_cookie("JSESSIONID"));
    }
    // Sessions on both nodes, so the drain below has some to wait for.
    for _ in 0..4 {
        new_session(&c, &gate).await;
    }

    let browser = Chromium::start();
    let mut cdp = Cdp::open_page(&browser).await;
    cdp.call("Network.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    let nav = cdp.call("Page.navigate", json!({ "url": base })).await;
    assert!(
        nav.get("errorText").is_none(),
        "navigating to {base}: {nav}"
    );

    cdp.wait_eval(
        "document.querySelectorAll('#backends tr[data-route]').length",
        "two backend rows in #backends",
        |v| v.as_u64() == Some(2),
    )
    .await;
    assert_eq!(cdp.eval("document.title").await, "stickgate status");
    for (b, other) in [(&b1, "tomcat2"), (&b2, "tomcat1")] {
        let text = cdp.eval(&row_text(&b.route)).await;
        let text = text.as_str().unwrap();
        assert!(
            text.contains(&b.route),
            "row of {} lacks its route: {text:?}",
            b.route
        );
        assert!(
            text.contains(&format!("127.0.0.1:{}", b.port)),
            "row of {} lacks its URL: {text:?}",
            b.route
        );
        assert!(
            text.contains("active") && text.contains("up"),
            "row of {}: {text:?}",
            b.route
        );
        assert!(
            !text.contains(other),
            "row of {} shows {other}: {text:?}",
            b.route
        );
    }
    let header = cdp
        .eval("document.querySelector('header').textContent")
        .await;
    assert!(
        header.as_str().unwrap().contains(env!("CARGO_PKG_VERSION")),
        "header lacks the version: {header}"
    );

    // Drain tomcat1 from the page (no dialog: only Stop asks).
    let clicked = cdp
        .eval(
            "(function(){var b=document.querySelector('button[data-action=drain][data-route=tomcat1]');\
             if(!b)return 'no button';b.click();return 'clicked'})()",
        )
        .await;
    assert_eq!(clicked, "clicked", "Drain button of tomcat1");

    // (a) the balancer took it, per the JSON API ...
    let end = Instant::now() + WAIT;
    loop {
        let st = gate.backend_status("tomcat1").await;
        if st["state"] == "draining" {
            break;
        }
        assert!(
            Instant::now() < end,
            "tomcat1 not draining {WAIT:?} after the click: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gate.backend_status("tomcat2").await["state"], "active");

    // ... and (b) the page re-rendered it, with the result line.
    cdp.wait_eval(&row_text("tomcat1"), "tomcat1 row showing draining", |v| {
        v.as_str().is_some_and(|t| t.contains("draining"))
    })
    .await;
    let t2 = cdp.eval(&row_text("tomcat2")).await;
    assert!(
        t2.as_str().unwrap().contains("active"),
        "tomcat2 row changed: {t2}"
    );
    cdp.wait_eval(
        "document.getElementById('message').textContent",
        "result line in #message",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("tomcat1") && t.contains("draining"))
        },
    )
    .await;

    // Stop asks first (its sessions would fail over at once): dismiss the
    // dialog and nothing changes. Clicked from a timer, as a dialog blocks
    // the evaluation that opens it.
    cdp.eval(
        "setTimeout(function(){document.querySelector('button[data-action=stop][data-route=tomcat1]').click()}, 0); 1",
    )
    .await;
    let dialog = cdp.wait_event("Page.javascriptDialogOpening").await;
    assert_eq!(dialog["params"]["type"], "confirm", "Stop dialog: {dialog}");
    assert!(
        dialog["params"]["message"]
            .as_str()
            .unwrap()
            .contains("tomcat1"),
        "Stop dialog names the route: {dialog}"
    );
    cdp.call("Page.handleJavaScriptDialog", json!({ "accept": false }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gate.backend_status("tomcat1").await["state"],
        "draining",
        "a dismissed Stop changed the state"
    );

    // Request rate, computed by the page from two polls: new sessions now go
    // to tomcat2 (tomcat1 drains), so its req/s turns positive.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (stop.clone(), gate.url("/"));
        tokio::spawn(async move {
            let c = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = try_request(&c, "GET", &url, None, bytes::Bytes::new()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let rate = cdp
        .wait_eval(
            "document.querySelector('#backends tr[data-route=tomcat2] td.rate').textContent",
            "a positive req/s for tomcat2 under traffic",
            |v| {
                v.as_str()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                    .is_some_and(|r| r > 0.0)
            },
        )
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    eprintln!("tomcat2 req/s shown: {rate}");

    if let Ok(path) = std::env::var("STICKGATE_STATUS_SCREENSHOT") {
        let shot = cdp
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(&path, png).unwrap();
    }

    // Trends. The page draws one sparkline per series from /api/history
    // (a point every second here): points for every backend, and tomcat2's
    // requests/s above zero after the traffic above.
    for route in ["tomcat1", "tomcat2"] {
        for series in ["requests", "errors", "sessions"] {
            cdp.wait_eval(
                &spark_points(route, series),
                &format!("a {series} sparkline of {route} with points"),
                |v| v["points"].as_u64().unwrap_or(0) >= 2 && v["lines"] == v["points"],
            )
            .await;
        }
    }
    cdp.wait_eval(
        &spark_points("tomcat2", "requests"),
        "tomcat2's requests sparkline above zero",
        |v| v["max"].as_f64().unwrap_or(0.0) > 0.0,
    )
    .await;

    // The drain bar of tomcat1 shows what the API says is left.
    let remaining = gate.backend_status("tomcat1").await["sessions_remaining"]
        .as_u64()
        .unwrap();
    assert!(remaining >= 1, "no session on tomcat1 to drain");
    let bar = cdp
        .wait_eval(
            "(function(){var d=document.querySelector('#backends tr[data-route=tomcat1] .drain');\
             return d?{remaining:d.getAttribute('data-remaining'),text:d.textContent,\
             bar:!!d.querySelector('.track .fill')}:null})()",
            "the drain bar of tomcat1",
            |v| v["remaining"].as_str() == Some(&remaining.to_string()),
        )
        .await;
    assert!(
        bar["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{remaining} of {remaining} left")),
        "drain bar text: {bar}"
    );
    assert_eq!(bar["bar"], true, "drain bar without its bar: {bar}");
    let none = cdp
        .eval("document.querySelector('#backends tr[data-route=tomcat2] .drain').textContent")
        .await;
    assert_eq!(none, "", "tomcat2 is active: no drain bar");

    // The event timeline shows the drain.
    cdp.wait_eval(
        "Array.prototype.map.call(document.querySelectorAll('#events li[data-kind=state]'),function(l){return l.textContent}).join('|')",
        "the drain in the event timeline",
        |v| v.as_str().is_some_and(|t| t.contains("tomcat1: active -> draining")),
    )
    .await;

    // Both screen sizes, light and dark: no horizontal scrolling, and a
    // screenshot of each for a person to look at.
    let shots = artefact_dir();
    cdp.resize(1280, 900, false).await;
    cdp.assert_fits("1280x900").await;
    cdp.screenshot(&shots, "status-1280x900.png").await;
    cdp.resize(390, 844, true).await;
    cdp.assert_fits("390x844").await;
    let card = cdp
        .eval(
            "getComputedStyle(document.querySelector('#backends tr[data-route=tomcat1]')).display",
        )
        .await;
    assert_eq!(card, "block", "at 390 px the rows are stacked cards");
    cdp.screenshot(&shots, "status-390x844.png").await;
    cdp.call(
        "Emulation.setEmulatedMedia",
        json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    )
    .await;
    let bg = cdp
        .wait_eval(
            "getComputedStyle(document.body).backgroundColor",
            "a dark background with prefers-color-scheme: dark",
            |v| {
                v.as_str().is_some_and(|c| {
                    let rgb: Vec<u32> = c
                        .trim_start_matches("rgb(")
                        .trim_end_matches(')')
                        .split(',')
                        .filter_map(|x| x.trim().parse().ok())
                        .collect();
                    rgb.len() == 3 && rgb.iter().sum::<u32>() < 200
                })
            },
        )
        .await;
    cdp.assert_fits("390x844, dark").await;
    cdp.screenshot(&shots, "status-390x844-dark.png").await;
    cdp.resize(1280, 900, false).await;
    cdp.assert_fits("1280x900, dark").await;
    cdp.screenshot(&shots, "status-1280x900-dark.png").await;
    eprintln!(
        "status page screenshots (1280x900, 390x844, light and dark; dark background {bg}): {}",
        shots.display()
    );

    // The admin API goes away: a visible error banner, the last data kept.
    gate.proc.kill();
    cdp.wait_eval(
        "(function(){var b=document.getElementById('banner');\
         return getComputedStyle(b).display!=='none' ? b.textContent : ''})()",
        "the error banner once the admin API is gone",
        |v| v.as_str().is_some_and(|t| t.contains("unreachable")),
    )
    .await;
    let kept = cdp.eval(&row_text("tomcat1")).await;
    assert!(
        kept.as_str().unwrap().contains("draining"),
        "the rows were not kept after the API went away: {kept}"
    );

    // No request left the admin listener: no CDN, fonts or images by URL.
    cdp.pump(Duration::from_millis(300)).await;
    let urls = cdp.request_urls();
    assert!(
        urls.iter()
            .any(|u| u.starts_with(&format!("{base}api/status"))),
        "no api/status fetch recorded: {urls:?}"
    );
    assert!(
        urls.iter()
            .any(|u| u == &format!("{base}api/backends/tomcat1/drain")),
        "no drain POST recorded: {urls:?}"
    );
    let foreign: Vec<&String> = urls
        .iter()
        .filter(|u| !u.starts_with(&base) && !u.starts_with("data:"))
        .collect();
    assert!(
        foreign.is_empty(),
        "the status page requested something outside {base}: {foreign:?}"
    );
    let ex = cdp.exceptions();
    assert!(ex.is_empty(), "the status page threw: {ex:?}");

    drop(cdp);
    drop(browser);
    eprintln!("status page drill took {:?}", started.elapsed());
}
