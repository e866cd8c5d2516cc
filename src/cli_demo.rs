//! `stickgate demo`: the balancer and two demo nodes on an embedded
//! default, so a newcomer sees stickiness and failover in a minute.

use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Start two nodes as child processes (so they can be killed by hand) and
/// the balancer in front of them.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let ports = [free_port()?, free_port()?];
    let mut children: Vec<(String, Child)> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let route = format!("tomcat{}", i + 1);
        let child = Command::new(&exe)
            .args([
                "demo-node",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--route",
                &route,
            ])
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start demo node {route}"))?;
        children.push((route, child));
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
        p1 = ports[0],
        p2 = ports[1]
    );
    let cfg = stickgate::config::from_str(&toml, std::path::Path::new("<demo>"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("stickgate demo: balancer on http://{listen}/ in front of two demo nodes");
    for (route, child) in &children {
        println!("  {route}: pid {}", child.id().unwrap_or(0));
    }
    println!(
        "\nTry it:\n  curl -c /tmp/jar -b /tmp/jar http://{listen}/    # repeat: same node, hits grow\n  kill {}                                          # kill the node that holds the session\n  curl -c /tmp/jar -b /tmp/jar http://{listen}/    # served by the other node, cookie rewritten\n  curl http://127.0.0.1:9901/api/status            # backends, health, sessions\nCtrl-C stops everything.",
        children[0].1.id().unwrap_or(0)
    );
    stickgate::run(cfg, crate::shutdown_signal()).await?;
    Ok(())
}

/// Serve one demo node in the foreground.
pub async fn node(listen: SocketAddr, route: String) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("demo node cannot listen on {listen}"))?;
    stickgate::demo::node::serve(l, stickgate::demo::node::NodeConfig::new(route)).await?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok(l.local_addr()?.port())
}
