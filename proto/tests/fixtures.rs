//! Requests captured from real git 2.47 and 2.39 clients (see fixtures/README.md) parse,
//! and parse to what the client asked for.

use std::path::PathBuf;

use gitgate_proto::normalize;
use gitgate_proto::request::receive::{self, Head};
use gitgate_proto::request::upload_v0::Deepen;
use gitgate_proto::request::{command_v2, upload_v0};
use gitgate_proto::ProtocolVersion;

struct Fixture {
    client: String,
    scenario: String,
    service: String,
    version: ProtocolVersion,
    body: Vec<u8>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for client in std::fs::read_dir(&dir).expect("fixtures dir").flatten() {
        if !client.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(client.path())
            .expect("client dir")
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".req") else {
                continue;
            };
            let (rest, version) = stem.rsplit_once('-').expect("version suffix");
            let service = if rest.ends_with("git-upload-pack") {
                "upload-pack"
            } else {
                "receive-pack"
            };
            let scenario = rest
                .split('-')
                .take_while(|p| p.parse::<u32>().is_err())
                .collect::<Vec<_>>()
                .join("-");
            out.push(Fixture {
                client: client.file_name().to_string_lossy().into_owned(),
                scenario,
                service: service.into(),
                version: if version == "v2" {
                    ProtocolVersion::V2
                } else {
                    ProtocolVersion::V0
                },
                body: std::fs::read(file.path()).expect("read fixture"),
            });
        }
    }
    assert!(
        out.len() >= 30,
        "expected the captured fixtures, found {}",
        out.len()
    );
    out
}

#[test]
fn every_fixture_parses() {
    for f in fixtures() {
        let what = format!("{} {} {} {:?}", f.client, f.scenario, f.service, f.version);
        match (f.service.as_str(), f.version) {
            ("upload-pack", ProtocolVersion::V0) => {
                let req = upload_v0::parse(&f.body).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(!req.wants.is_empty(), "{what}");
                assert!(
                    req.capabilities.iter().any(|c| c.starts_with("agent=git/")),
                    "{what}"
                );
            }
            ("upload-pack", ProtocolVersion::V2) => {
                let req = command_v2::parse(&f.body).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    matches!(req.command.as_str(), "ls-refs" | "fetch"),
                    "{what}"
                );
            }
            _ => {
                let head = receive::parse_head(&f.body).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(matches!(head, Head::Complete { .. }), "{what}");
            }
        }
        normalize::upload_pack(f.version, &f.body)
            .map(drop)
            .unwrap_or_else(|e| {
                assert_eq!(f.service, "receive-pack", "{what}: {e}");
            });
    }
}

fn v2_fetches(scenario: &str) -> Vec<(String, command_v2::FetchArgs)> {
    fixtures()
        .into_iter()
        .filter(|f| {
            f.scenario == scenario && f.version == ProtocolVersion::V2 && f.service == "upload-pack"
        })
        .filter_map(|f| {
            let req = command_v2::parse(&f.body).expect("parses");
            (req.command == "fetch").then(|| (f.client, req.fetch_args().expect("fetch args")))
        })
        .collect()
}

#[test]
fn shallow_filter_and_since_arguments_are_seen() {
    let shallow = v2_fetches("shallow");
    assert!(!shallow.is_empty());
    assert!(shallow
        .iter()
        .all(|(_, f)| f.deepen == [Deepen::Depth(1)] && f.done));
    let since = v2_fetches("since");
    assert!(since.iter().all(|(_, f)| matches!(f.deepen.as_slice(), [Deepen::Since(t)] if (946_684_800..946_771_200).contains(t))));
    let filter = v2_fetches("filter");
    assert!(filter
        .iter()
        .any(|(_, f)| f.filter.as_deref() == Some("blob:none")));
    let deepen = v2_fetches("deepen");
    assert!(deepen.iter().all(|(_, f)| !f.shallows.is_empty()));
}

#[test]
fn push_fixtures_carry_options_and_deletes() {
    for f in fixtures()
        .into_iter()
        .filter(|f| f.service == "receive-pack")
    {
        let Head::Complete { request, consumed } = receive::parse_head(&f.body).expect("parses")
        else {
            panic!("incomplete");
        };
        assert_eq!(
            consumed,
            f.body.len(),
            "{} {}: the command section is the whole capture",
            f.client,
            f.scenario
        );
        match f.scenario.as_str() {
            "push-options" => {
                assert_eq!(request.push_options, ["ci.skip", "topic=x"]);
                assert!(request.expects_pack());
            }
            "push-delete" => {
                assert!(request.updates.iter().all(|u| u.new.is_null()));
                assert!(!request.expects_pack());
            }
            other => panic!("unexpected push scenario {other}"),
        }
    }
}

#[test]
fn clones_from_both_clients_normalize_alike() {
    let clone_of = |client: &str, version: ProtocolVersion| {
        fixtures()
            .into_iter()
            .filter(|f| f.client == client && f.scenario == "clone" && f.version == version)
            .map(|f| normalize::upload_pack(version, &f.body).expect("normalizes"))
            .find(|n| n.cacheable())
            .expect("a cacheable clone request")
    };
    for version in [ProtocolVersion::V0, ProtocolVersion::V2] {
        assert_eq!(
            clone_of("git-2.47", version),
            clone_of("git-2.39", version),
            "{version:?}"
        );
    }
}
