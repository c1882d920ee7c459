//! The upload-pack response checker on arbitrary node output, in every framing.
#![no_main]

use gitgate_proto::response::{Expected, Framing, ObjectFormat, ResponseCheck};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for framing in [
        Framing::V0 { sideband: true },
        Framing::V0 { sideband: false },
        Framing::V2,
    ] {
        for format in [ObjectFormat::Sha1, ObjectFormat::Sha256] {
            let mut check = ResponseCheck::new(Expected { framing, format });
            let _ = check.feed(data).and_then(|()| check.finish());
        }
    }
});
