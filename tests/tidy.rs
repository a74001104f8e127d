//! Tidy checks on the source tree (rust-analyzer's `tidy.rs` idea): the rules of
//! STYLE.md that a compiler does not enforce.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn files(sub: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    rust_files(&root.join(sub), &mut v);
    v.into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p.strip_prefix(root).unwrap().display().to_string(), text)
        })
        .collect()
}

/// Code lines only: line comments are dropped so prose may mention the words.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter(|(_, l)| {
        let t = l.trim_start();
        !t.starts_with("//") && !t.starts_with('*')
    })
}

#[test]
fn unsafe_only_in_log_mmap_and_every_block_has_a_safety_comment() {
    for (path, text) in files("src") {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in code_lines(&text) {
            let has_unsafe = line.contains("unsafe {")
                || line.contains("unsafe fn")
                || line.contains("unsafe impl");
            if !has_unsafe {
                continue;
            }
            assert_eq!(
                path,
                "src/log/mmap.rs",
                "unsafe outside log/mmap.rs at {path}:{}",
                i + 1
            );
            let window = &lines[i.saturating_sub(8)..=i];
            assert!(
                window.iter().any(|l| l.contains("SAFETY:")),
                "unsafe without a `// SAFETY:` comment at {path}:{}",
                i + 1
            );
        }
    }
}

#[test]
fn layers_point_down_only() {
    for (path, text) in files("src/engine") {
        for (i, line) in code_lines(&text) {
            for banned in ["crate::log", "crate::runtime", "crate::api"] {
                assert!(
                    !line.contains(banned),
                    "{path}:{} uses {banned}: the engine must stay pure",
                    i + 1
                );
            }
        }
    }
    for (path, text) in files("src/log") {
        for (i, line) in code_lines(&text) {
            for banned in [
                "crate::engine",
                "crate::runtime",
                "crate::api",
                "crate::codec",
            ] {
                assert!(
                    !line.contains(banned),
                    "{path}:{} uses {banned}: the log knows only bytes",
                    i + 1
                );
            }
        }
    }
    for (path, text) in files("src/codec") {
        for (i, line) in code_lines(&text) {
            for banned in [
                "crate::engine",
                "crate::runtime",
                "crate::api",
                "crate::log",
            ] {
                assert!(!line.contains(banned), "{path}:{} uses {banned}", i + 1);
            }
        }
    }
}

#[test]
fn tests_neither_ignore_nor_sleep() {
    let mut all = files("tests");
    all.extend(files("src"));
    for (path, text) in all {
        if path.ends_with("tidy.rs") {
            continue;
        }
        for (i, line) in code_lines(&text) {
            assert!(
                !line.contains("#[ignore"),
                "{path}:{} ignores a test",
                i + 1
            );
            assert!(
                !line.contains("should_panic"),
                "{path}:{} uses should_panic",
                i + 1
            );
        }
        if path.starts_with("tests") || text.contains("#[cfg(test)]") && path.ends_with("tests.rs")
        {
            for (i, line) in code_lines(&text) {
                assert!(
                    !line.contains("thread::sleep"),
                    "{path}:{} waits with a fixed sleep",
                    i + 1
                );
            }
        }
    }
}
