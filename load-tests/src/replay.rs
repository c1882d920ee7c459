//! The light client: protocol v2 fetch requests sent as raw HTTP, and checks of the
//! packs that come back.
//!
//! A replayed request is what `git clone` sends for its fetch (the same arguments:
//! `thin-pack`, `no-progress`, `ofs-delta`, wants for every branch and tag, `done`),
//! so the server does the same work while the client only checks the pack's trailer
//! instead of indexing it.

use anyhow::{bail, Context};
use sha1::{Digest, Sha1};

/// A v2 `fetch` to replay.
#[derive(Clone, Debug)]
pub struct Fetch {
    /// Objects wanted.
    pub wants: Vec<String>,
    /// Objects the client claims to have.
    pub haves: Vec<String>,
    /// `deepen <n>` for shallow fetches.
    pub deepen: Option<u32>,
}

fn pkt(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
}

impl Fetch {
    /// The request body.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        pkt(&mut out, "command=fetch\n");
        pkt(&mut out, "agent=gitgate-load/1\n");
        pkt(&mut out, "object-format=sha1\n");
        out.extend_from_slice(b"0001");
        for arg in ["thin-pack\n", "no-progress\n", "ofs-delta\n"] {
            pkt(&mut out, arg);
        }
        if let Some(depth) = self.deepen {
            pkt(&mut out, &format!("deepen {depth}\n"));
        }
        for w in &self.wants {
            pkt(&mut out, &format!("want {w}\n"));
        }
        for h in &self.haves {
            pkt(&mut out, &format!("have {h}\n"));
        }
        pkt(&mut out, "done\n");
        out.extend_from_slice(b"0000");
        out
    }
}

/// What a verified response held.
#[derive(Debug, PartialEq, Eq)]
pub struct PackSummary {
    /// Objects in the pack.
    pub objects: u32,
    /// Bytes of pack data.
    pub bytes: usize,
}

/// Check a v2 fetch response: it must carry a `packfile` section whose pack has the
/// right signature and a SHA-1 trailer matching its contents.
pub fn verify(response: &[u8]) -> anyhow::Result<PackSummary> {
    let mut pack = Vec::new();
    let mut in_pack = false;
    let mut at = 0;
    while at + 4 <= response.len() {
        let len = usize::from_str_radix(std::str::from_utf8(&response[at..at + 4])?, 16)
            .context("pkt-line length")?;
        if len < 4 {
            at += 4;
            if len == 0 && in_pack {
                break;
            }
            continue;
        }
        let end = at + len;
        if end > response.len() {
            bail!("response truncated inside a pkt-line");
        }
        let data = &response[at + 4..end];
        at = end;
        if !in_pack {
            if data == b"packfile\n" {
                in_pack = true;
            } else if data.starts_with(b"ERR ") {
                bail!("server error: {}", String::from_utf8_lossy(data));
            }
            continue;
        }
        match data.first() {
            Some(1) => pack.extend_from_slice(&data[1..]),
            Some(2) => {}
            Some(3) => bail!("server error: {}", String::from_utf8_lossy(&data[1..])),
            _ => bail!("unexpected sideband line"),
        }
    }
    if !in_pack {
        bail!("no packfile section");
    }
    if pack.len() < 32 || &pack[..4] != b"PACK" {
        bail!("not a pack");
    }
    let (content, trailer) = pack.split_at(pack.len() - 20);
    if Sha1::digest(content).as_slice() != trailer {
        bail!("pack checksum mismatch");
    }
    let objects = u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]]);
    Ok(PackSummary {
        objects,
        bytes: pack.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(format!("{:04x}", data.len() + 5).as_bytes());
        out.push(1);
        out.extend_from_slice(data);
    }

    #[test]
    fn verifies_a_pack_and_rejects_corruption() {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
        pack.extend_from_slice(&[0u8; 20]);
        let digest = Sha1::digest(&pack);
        pack.extend_from_slice(&digest);
        let mut resp = Vec::new();
        pkt(&mut resp, "packfile\n");
        band(&mut resp, &pack[..10]);
        band(&mut resp, &pack[10..]);
        resp.extend_from_slice(b"0000");
        assert_eq!(verify(&resp).expect("valid").objects, 0);
        let mut bad = resp.clone();
        let n = bad.len() - 10;
        bad[n] ^= 1;
        assert!(verify(&bad).is_err());
        assert!(verify(&resp[..resp.len() - 8]).is_err());
    }

    #[test]
    fn request_has_the_clone_arguments() {
        let body = Fetch {
            wants: vec!["a".repeat(40)],
            haves: vec![],
            deepen: Some(1),
        }
        .body();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("0012command=fetch\n"));
        assert!(text.contains("deepen 1\n") && text.contains("done\n") && text.ends_with("0000"));
    }
}
