//! The `git-remote-hanzo` binary: git runs it for `hanzo://` URLs.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match hanzo_node::remote::run(&args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fatal: hanzo: {err:#}");
            std::process::ExitCode::from(128)
        }
    }
}
