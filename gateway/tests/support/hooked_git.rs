//! A git program for nodes whose pack-objects runs through a hook, so a test can make
//! pack generation slow, or make it die halfway.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How the hook runs pack-objects.
#[derive(Clone, Copy)]
pub enum Mode {
    Normal,
    /// About 3 MB/s.
    Slow,
    /// Slow, then dies after about 1 MiB.
    Fail,
    /// Slow, then after about 1 MiB stops upload-pack itself (SIGSTOP): a node's git
    /// output that goes silent mid-pack, without keep-alives.
    Stall,
    /// upload-pack (a fetch, not an advertisement) never starts and never answers: a
    /// node's git that hangs before its first byte. The stand-in is `sleep 613`.
    Hang,
}

/// A git program for the node whose pack-objects behaves as `mode` says.
pub struct HookedGit {
    dir: PathBuf,
}

impl HookedGit {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let real = Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("sh");
        let real = String::from_utf8(real.stdout).expect("utf-8");
        let hook = dir.join("hook");
        std::fs::write(
            &hook,
            format!(
                r#"#!/usr/bin/env python3
import os, signal, subprocess, sys, time
mode = open("{mode}").read().strip()
parent = os.getppid()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
out = sys.stdout.buffer
sent = 0
while True:
    chunk = p.stdout.read(65536)
    if not chunk:
        break
    if mode == "fail" and sent > (1 << 20):
        p.kill()
        sys.exit(1)
    if mode == "stall" and sent > (1 << 20):
        p.kill()
        os.kill(parent, signal.SIGSTOP)
        # Until upload-pack is killed (this process is then reparented).
        while os.getppid() == parent:
            time.sleep(0.1)
        sys.exit(1)
    out.write(chunk)
    out.flush()
    sent += len(chunk)
    if mode != "normal":
        time.sleep(0.02)
sys.exit(p.wait())
"#,
                mode = dir.join("mode").display()
            ),
        )
        .expect("write hook");
        let wrapper = dir.join("git");
        std::fs::write(
            &wrapper,
            format!(
                r#"#!/bin/sh
if [ "$(cat {mode})" = hang ]; then
  case " $* " in
    *" --advertise-refs "*) ;;
    *" upload-pack "*) exec sleep 613 ;;
  esac
fi
exec {git} -c uploadpack.packObjectsHook={hook} "$@"
"#,
                mode = dir.join("mode").display(),
                git = real.trim(),
                hook = hook.display()
            ),
        )
        .expect("write wrapper");
        for f in [&hook, &wrapper] {
            let status = Command::new("chmod").arg("+x").arg(f).status();
            assert!(status.is_ok_and(|s| s.success()), "chmod");
        }
        let hooked = Self {
            dir: dir.to_owned(),
        };
        hooked.set(Mode::Normal);
        hooked
    }

    pub fn set(&self, mode: Mode) {
        let word = match mode {
            Mode::Normal => "normal",
            Mode::Slow => "slow",
            Mode::Fail => "fail",
            Mode::Stall => "stall",
            Mode::Hang => "hang",
        };
        std::fs::write(self.dir.join("mode"), word).expect("write mode");
    }

    pub fn program(&self) -> String {
        self.dir.join("git").display().to_string()
    }
}
