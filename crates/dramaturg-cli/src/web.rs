//! `dramaturg web`: the dashboard of `dramaturg-web`, served until Ctrl-C.

use std::net::SocketAddr;

use dramaturg::web::{Auth, Dashboard};
use dramaturg::App;

use crate::failure::{Exit, Failure};

/// Serves the dashboard of `app` on `bind` until Ctrl-C (or SIGTERM);
/// the address it listened on.
pub(crate) async fn serve(
    app: &App,
    bind: SocketAddr,
    read_only: bool,
    token: Option<String>,
    queues: Vec<String>,
) -> Result<SocketAddr, Failure> {
    if token.as_deref() == Some("") {
        // An unset variable (`DRAMATURG_WEB_TOKEN=`) must not open the
        // dashboard to a blank password.
        return Err(Failure::new(
            Exit::Usage,
            "--token (or DRAMATURG_WEB_TOKEN) is empty; give a secret, or leave it out",
        ));
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| Failure::new(Exit::Broker, format!("cannot listen on {bind}: {e}")))?;
    let address = listener.local_addr().map_err(|e| Failure::new(Exit::Broker, e.to_string()))?;
    let mut dashboard = Dashboard::new(app.clone()).read_only(read_only).queues(queues);
    let protected = token.is_some();
    if let Some(token) = token {
        dashboard = dashboard.auth(Auth::token(token));
    }
    eprintln!(
        "dashboard on http://{address}/{}{}",
        if read_only { " (read-only)" } else { "" },
        if protected { " (token required)" } else { "" }
    );
    if !address.ip().is_loopback() && !protected {
        eprintln!("warning: listening beyond this machine without --token: anyone who reaches {address} can act");
    }
    dashboard.serve(listener, stopped()).await.map_err(|e| Failure::new(Exit::Broker, e.to_string()))?;
    Ok(address)
}

/// Completes at Ctrl-C or SIGTERM.
async fn stopped() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
