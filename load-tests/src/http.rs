//! A small blocking HTTP/1.1 client that times the first response byte.
//!
//! Enough for load generation against loopback servers: one request per connection,
//! `Content-Length`, chunked or close-delimited bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What one request saw.
pub struct Exchange {
    /// HTTP status.
    pub status: u16,
    /// The whole body (dechunked); empty when it was counted, not kept.
    pub body: Vec<u8>,
    /// The body's length.
    pub len: u64,
    /// From sending the request to the first response byte.
    pub ttfb: Duration,
    /// From sending the request to the end of the body.
    pub total: Duration,
}

/// Send one request and read the whole response.
pub fn request(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Exchange> {
    exchange(authority, method, path, headers, body, true)
}

/// Send one request and read the whole response, counting the body's bytes without
/// keeping them: a client that costs the machine as little as a client can.
pub fn request_counted(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Exchange> {
    exchange(authority, method, path, headers, body, false)
}

fn exchange(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keep: bool,
) -> anyhow::Result<Exchange> {
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let started = Instant::now();
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let first = reader.fill_buf().context("reading the response")?;
    if first.is_empty() {
        bail!("connection closed before a response");
    }
    let ttfb = started.elapsed();
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let (mut length, mut chunked) = (None::<u64>, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<u64>().ok();
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    // Append `n` bytes (all that is left when `None`) to `body`, or just count them.
    let mut take = |reader: &mut BufReader<TcpStream>, n: Option<u64>| -> anyhow::Result<u64> {
        let mut part = match n {
            Some(n) => Box::new(reader.by_ref().take(n)) as Box<dyn Read + '_>,
            None => Box::new(reader.by_ref()),
        };
        let got = if keep {
            part.read_to_end(&mut body)? as u64
        } else {
            std::io::copy(&mut part, &mut std::io::sink())?
        };
        if n.is_some_and(|n| n != got) {
            bail!("body ended after {got} of {n:?} bytes");
        }
        Ok(got)
    };
    let mut len = 0;
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .context("chunk size")?;
            if size == 0 {
                break;
            }
            len += take(&mut reader, Some(size)).context("chunk data")?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        len = take(&mut reader, Some(n)).context("body")?;
    } else {
        len = take(&mut reader, None)?;
    }
    Ok(Exchange {
        status,
        body,
        len,
        ttfb,
        total: started.elapsed(),
    })
}
