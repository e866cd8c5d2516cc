//! `stickgate demo`: the balancer and two demo nodes on an embedded
//! default, so a newcomer sees stickiness and failover in a minute.
//!
//! The nodes run in this process and share their session data, like a
//! replicated Tomcat cluster, so a failed-over session keeps its base id and
//! its hit count. Typing `kill tomcat1` / `start tomcat1` stops and restarts
//! a node for real: its listener closes and connections are refused.

use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use stickgate::demo::node::{serve, NodeConfig, SharedSessions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;

const ROUTES: [&str; 2] = ["tomcat1", "tomcat2"];

struct Nodes {
    ports: HashMap<&'static str, u16>,
    running: HashMap<&'static str, JoinHandle<()>>,
    shared: SharedSessions,
}

impl Nodes {
    fn start(&mut self, route: &'static str) -> anyhow::Result<()> {
        if self.running.get(route).is_some_and(|h| !h.is_finished()) {
            println!("{route} is already running");
            return Ok(());
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports[route]));
        let listener = stickgate::server::bind(addr)?;
        let mut cfg = NodeConfig::new(route);
        cfg.shared = Some(self.shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = serve(listener, cfg).await {
                eprintln!("demo node {route}: {e}");
            }
        });
        self.running.insert(route, task);
        Ok(())
    }

    fn kill(&mut self, route: &str) {
        match self.running.remove(route) {
            Some(h) => {
                h.abort();
                println!("{route} killed: its port now refuses connections");
            }
            None => println!("{route} is not running"),
        }
    }
}

/// Run the demo until Ctrl-C.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let mut nodes = Nodes {
        ports: ROUTES
            .iter()
            .map(|r| Ok((*r, free_port()?)))
            .collect::<anyhow::Result<_>>()?,
        running: HashMap::new(),
        shared: SharedSessions::new(),
    };
    for r in ROUTES {
        nodes.start(r)?;
    }
    let toml = format!(
        r#"
[server]
listen = ["{listen}"]
[admin]
listen = "127.0.0.1:9901"
[health]
interval = "1s"
timeout = "500ms"
rise = 1
fall = 1
[[backend]]
route = "tomcat1"
url = "http://127.0.0.1:{p1}"
[[backend]]
route = "tomcat2"
url = "http://127.0.0.1:{p2}"
"#,
        p1 = nodes.ports["tomcat1"],
        p2 = nodes.ports["tomcat2"]
    );
    let cfg = stickgate::config::from_str(&toml, std::path::Path::new("<demo>"))?;
    println!(
        "stickgate demo: balancer on http://{listen}/ in front of demo nodes tomcat1 and tomcat2
(sessions are replicated between the nodes, like a Tomcat cluster)

In another terminal:
  curl -c /tmp/jar -b /tmp/jar http://{listen}/     # repeat: same node, hits grow
Then type here:
  kill tomcat1    (or whichever node the answers name)
and repeat the curl: the other node answers, same session, hits continue,
and the cookie's route suffix is rewritten. `start tomcat1` brings it back;
the session stays where it is now (no flap-back).
Status page (drain/stop/enable buttons): http://127.0.0.1:9901/
  stickgate ctl status | drain tomcat1 | enable tomcat1
  curl http://127.0.0.1:9901/metrics                 # Prometheus
Ctrl-C stops everything."
    );
    let mut balancer = tokio::spawn(stickgate::run(cfg, None, crate::shutdown_signal()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            done = &mut balancer => {
                done??;
                return Ok(());
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => command(&mut nodes, l.trim()),
                _ => stdin_open = false,
            },
        }
    }
}

fn command(nodes: &mut Nodes, line: &str) {
    let mut words = line.split_whitespace();
    let (verb, node) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let Some(route) = ROUTES.iter().copied().find(|r| *r == node) else {
        if !line.is_empty() {
            println!("commands: kill tomcat1 | start tomcat1 | kill tomcat2 | start tomcat2");
        }
        return;
    };
    match verb {
        "kill" | "stop" => nodes.kill(route),
        "start" => match nodes.start(route) {
            Ok(()) => println!("{route} started"),
            Err(e) => println!("cannot start {route}: {e:#}"),
        },
        _ => println!("commands: kill {route} | start {route}"),
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok(l.local_addr()?.port())
}
