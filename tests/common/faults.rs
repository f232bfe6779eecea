//! Fault injection on loopback: a TCP proxy that can go down (cutting every open
//! connection and dropping new ones) and come back on the same port.

use std::net::SocketAddr;

use tokio::{net::TcpListener, sync::watch};

/// A proxy in front of `target`.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    down: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (down, watch) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: the client sees the connection close
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Self { addr, down }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Goes down (`true`) or comes back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}
