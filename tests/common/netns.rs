//! Real partitions: Linux network namespaces. A bridge lives in a namespace of its
//! own; each node gets a namespace joined to the bridge by a veth pair, and so does
//! the host (the test), at `10.213.0.254`. Cutting a node's link is setting its
//! bridge-side veth down. Needs root and `ip` (iproute2); fails with the reason
//! otherwise. Dropping the [`Net`] deletes every namespace and link it made, also
//! when the test fails.

use std::{net::Ipv4Addr, process::Command};

use tokio::net::{TcpListener, TcpStream};

/// A bridged set of namespaces.
pub struct Net {
    prefix: String,
    nodes: usize,
}

/// Runs `ip args`, panicking with its error if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (these tests need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Net {
    /// Namespaces for `nodes` nodes and the bridge.
    pub fn new(nodes: usize) -> Self {
        let net = Self {
            prefix: format!("hz{}", std::process::id() % 10_000),
            nodes,
        };
        net.remove();
        let br = net.bridge();
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = net.ns(i);
            let (inner, outer) = (format!("{}{i}a", net.prefix), format!("{}{i}b", net.prefix));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "netns", &br]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &br, "link", "set", &outer, "master", "br0", "up"]);
        }
        let (host, outer) = (format!("{}h", net.prefix), format!("{}hb", net.prefix));
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &outer]);
        ip(&["link", "set", &outer, "netns", &br]);
        ip(&["addr", "add", &format!("{}/24", Self::host()), "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        ip(&["-n", &br, "link", "set", &outer, "master", "br0", "up"]);
        net
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 0, u8::try_from(i + 1).expect("few nodes"))
    }

    /// The host's address on the bridge.
    pub fn host() -> Ipv4Addr {
        Ipv4Addr::new(10, 213, 0, 254)
    }

    /// Cuts (`up == false`) or restores node `i`'s link to the bridge.
    pub fn link(&self, i: usize, up: bool) {
        let outer = format!("{}{i}b", self.prefix);
        ip(&[
            "-n",
            &self.bridge(),
            "link",
            "set",
            &outer,
            if up { "up" } else { "down" },
        ]);
    }

    /// `program` to run inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i), program]);
        cmd
    }

    /// Relays TCP connections to the host's `target` (on loopback) from the bridge,
    /// so nodes in namespaces reach it; returns the address they connect to.
    pub async fn relay(&self, target: std::net::SocketAddr) -> std::net::SocketAddr {
        let listener = TcpListener::bind((Self::host(), 0))
            .await
            .expect("bind the relay on the bridge");
        let addr = listener.local_addr().expect("relay address");
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        addr
    }

    /// Deletes the namespaces and links (of a run that crashed, too).
    fn remove(&self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).output();
        };
        for i in 0..self.nodes {
            quiet(&["netns", "del", &self.ns(i)]);
        }
        quiet(&["netns", "del", &self.bridge()]);
        quiet(&["link", "del", &format!("{}h", self.prefix)]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
