//! Pkt-line decoding, advertisement parsing and repository paths on arbitrary bytes.
#![no_main]

use gitgate_proto::{advertise, pktline, GitProtocol, RepoPath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in pktline::lines(data) {
        if line.is_err() {
            break;
        }
    }
    let _ = advertise::parse_v0(data);
    let _ = advertise::parse_v2_capabilities(data);
    let _ = GitProtocol::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RepoPath::parse(text);
        let _ = gitgate_proto::smart_http::parse_path(text);
    }
});
