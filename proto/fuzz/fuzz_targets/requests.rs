//! Every request parser and the cache-key normalization on arbitrary bytes.
#![no_main]

use gitgate_proto::request::{command_v2, receive, upload_v0};
use gitgate_proto::{normalize, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = upload_v0::parse(data);
    if let Ok(req) = command_v2::parse(data) {
        let _ = req.fetch_args();
        let _ = req.ls_refs_args();
        let _ = req.object_info_args();
    }
    if let Ok(receive::Head::Complete { consumed, .. }) = receive::parse_head(data) {
        assert!(consumed <= data.len());
    }
    let _ = normalize::upload_pack(ProtocolVersion::V0, data);
    let _ = normalize::upload_pack(ProtocolVersion::V2, data);
});
