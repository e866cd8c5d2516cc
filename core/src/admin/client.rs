//! A small client of the admin API, shared by `stickgate ctl` and
//! `stickgate drill` so both speak to it (and present the token) the same
//! way.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::Duration;

/// Why an admin request failed; each message says what to check. The
/// cause is part of the message and deliberately not an error `source`:
/// `ctl` prints the whole chain (`{:#}`), which would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--admin {0:?} is not a URL like http://127.0.0.1:9901")]
    BadUrl(String),
    #[error("admin API at {0} did not accept a connection within 5s")]
    ConnectTimeout(String),
    #[error("cannot reach the admin API at {url}: {error}; is stickgate running with [admin] listen set?")]
    Connect { url: String, error: std::io::Error },
    #[error("admin API request failed: {0}")]
    Http(hyper::Error),
    #[error("admin API at {0} did not answer within 30s")]
    Timeout(String),
    #[error("admin API answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
    #[error("cannot read the admin token: {0}")]
    Token(String),
}

impl From<hyper::Error> for ClientError {
    fn from(e: hyper::Error) -> Self {
        ClientError::Http(e)
    }
}

/// Where the admin API is and the token to present.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    host: String,
    port: u16,
    authority: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client for `base` (e.g. `http://127.0.0.1:9901`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let uri: http::Uri = base
            .parse()
            .map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| ClientError::BadUrl(base.to_owned()))?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            host: auth.host().trim_matches(['[', ']']).to_owned(),
            port: auth.port_u16().unwrap_or(80),
            authority: auth.as_str().to_owned(),
            token,
        })
    }

    /// GET `path`; the body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(http::Method::GET, path).await
    }

    /// POST `path` with an empty body; the body of a 2xx answer.
    pub async fn post(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(http::Method::POST, path).await
    }

    async fn send(&self, method: http::Method, path: &str) -> Result<Bytes, ClientError> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ClientError::ConnectTimeout(self.base.clone()))?
        .map_err(|error| ClientError::Connect {
            url: self.base.clone(),
            error,
        })?;
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.authority);
            if let Some(t) = &self.token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|_| ClientError::BadUrl(format!("{}{path}", self.base)))?;
            let res = sender.send_request(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
                return Err(ClientError::Status {
                    status,
                    body: message,
                });
            }
            Ok(body)
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.base.clone()))?
    }
}

/// The token for admin requests: from `--token-file`, else the environment
/// variable `STICKGATE_ADMIN_TOKEN`, else none.
pub fn token_from(file: Option<&Path>) -> Result<Option<String>, ClientError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Token(format!("{}: {e}", path.display())))?;
        let t = text.trim().to_owned();
        if t.is_empty() {
            return Err(ClientError::Token(format!("{} is empty", path.display())));
        }
        return Ok(Some(t));
    }
    Ok(std::env::var("STICKGATE_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}
