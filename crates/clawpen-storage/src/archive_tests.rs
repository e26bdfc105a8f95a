use super::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;

use tar::EntryType;

/// The allocator of this test binary: the system's, noting the largest single allocation made
/// by a thread that asked (to show that a bomb is refused before its size is allocated).
struct Peak;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(n: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(n)));
        }
    });
}

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// Runs `f`, returning what it gave and the largest single allocation it made on this thread.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACK.with(|t| t.set(true));
    let out = f();
    TRACK.with(|t| t.set(false));
    (out, PEAK.with(|p| p.get()))
}

fn limits(max_bytes: u64, max_entries: u64) -> Limits {
    Limits { max_bytes, max_entries }
}

const ROOMY: Limits = Limits { max_bytes: 1 << 20, max_entries: 100 };

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A header written by hand: the name's bytes (and the link's) as they are, unchecked.
fn header(name: &[u8], kind: EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    if matches!(kind, EntryType::Char | EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    h
}

/// A hand-made entry: name, kind, data, link name.
type Raw<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// A plain tar of hand-made entries.
fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        b.append(&header(name, *kind, data.len() as u64, link), *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn file(name: &[u8]) -> Raw<'_> {
    (name, EntryType::Regular, b"data", b"")
}

/// Reads `tar` gzipped and expects a refusal whose message has every one of `words`.
fn refused(tar: &[u8], words: &[&str]) {
    match read_archive(&gz(tar)[..], &ROOMY) {
        Err(ArchiveError::Refused(m)) => {
            for w in words {
                assert!(m.contains(w), "{m:?} should say {w:?}");
            }
        }
        other => panic!("expected a refusal saying {words:?}, got {other:?}"),
    }
}

fn too_large(got: Result<Vec<Item>, ArchiveError>, words: &[&str]) {
    match got {
        Err(ArchiveError::TooLarge(m)) => {
            for w in words {
                assert!(m.contains(w), "{m:?} should say {w:?}");
            }
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

fn export(items: &[Item]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for i in items {
        match i {
            Item::Dir { path, mode } => w.add_dir(path, *mode).unwrap(),
            Item::File { path, mode, bytes } => w.add_file(path, *mode, bytes).unwrap(),
        }
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_is_exact_and_byte_identical() {
    let long = format!("memory/{}/note.md", "deep".repeat(40));
    let items = vec![
        Item::File { path: "SOUL.md".into(), mode: 0o644, bytes: b"# soul\n".to_vec() },
        Item::Dir { path: "memory".into(), mode: 0o700 },
        Item::File { path: "memory/2024-01-01.md".into(), mode: 0o600, bytes: b"facts".to_vec() },
        Item::File { path: long.clone(), mode: 0o600, bytes: vec![7; 100_000] },
        Item::File { path: "sessions/main.jsonl".into(), mode: 0o640, bytes: Vec::new() },
        Item::File { path: "notes/café ✓.md".into(), mode: 0o644, bytes: b"utf-8 names".to_vec() },
    ];
    let a = export(&items);
    let b = export(&items);
    assert_eq!(a, b, "two exports of the same data are byte-identical");
    assert_eq!(&a[..2], &[0x1f, 0x8b]);
    assert_eq!(read_archive(&a[..], &ROOMY).unwrap(), items);
    // The same tar, not gzipped, reads too.
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&a[..]).read_to_end(&mut plain).unwrap();
    assert_eq!(read_archive(&plain[..], &ROOMY).unwrap(), items);
    // An empty export is an archive of nothing.
    assert_eq!(read_archive(&Writer::new(Vec::new()).finish().unwrap()[..], &ROOMY).unwrap(), vec![]);
}

#[test]
fn modes_keep_permission_bits_only() {
    let mut w = Writer::new(Vec::new());
    w.add_file("run.sh", 0o104755, b"#!/bin/sh").unwrap();
    w.add_dir("tmp", 0o41777).unwrap();
    let got = read_archive(&w.finish().unwrap()[..], &ROOMY).unwrap();
    assert_eq!(got, vec![Item::File { path: "run.sh".into(), mode: 0o755, bytes: b"#!/bin/sh".to_vec() }, Item::Dir { path: "tmp".into(), mode: 0o777 }]);
    // A setuid bit put in by hand is dropped too.
    let mut h = header(b"suid", EntryType::Regular, 1, b"");
    h.set_mode(0o4755);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    assert_eq!(read_archive(&gz(&b.into_inner().unwrap())[..], &ROOMY).unwrap(), vec![Item::File { path: "suid".into(), mode: 0o755, bytes: b"x".to_vec() }]);
}

#[test]
fn writer_refuses_bad_paths() {
    let mut w = Writer::new(Vec::new());
    for bad in ["../escape", "/etc/passwd", "a/../../b", "./a", "a//b", "a/", "", "nul\0"] {
        match w.add_file(bad, 0o644, b"x") {
            Err(ArchiveError::Refused(m)) => assert!(m.contains("not a plain relative path"), "{m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    w.add_file("a", 0o644, b"x").unwrap();
    assert!(matches!(w.add_file("a", 0o644, b"x"), Err(ArchiveError::Refused(m)) if m.contains("twice")));
    assert!(matches!(w.add_dir("a/b", 0o700), Err(ArchiveError::Refused(m)) if m.contains("which is a file")));
    // What was refused was not written: the archive holds "a" only.
    assert_eq!(read_archive(&w.finish().unwrap()[..], &ROOMY).unwrap(), vec![Item::File { path: "a".into(), mode: 0o644, bytes: b"x".to_vec() }]);
}

#[test]
fn gnu_style_dir_names_are_read() {
    let t = tar_of(&[(b"memory/", EntryType::Directory, b"", b""), file(b"memory/x.md")]);
    let got = read_archive(&gz(&t)[..], &ROOMY).unwrap();
    assert_eq!(got[0], Item::Dir { path: "memory".into(), mode: 0o644 });
    assert_eq!(got[1].path(), "memory/x.md");
    // A file whose parent is not listed is fine.
    assert_eq!(read_archive(&gz(&tar_of(&[file(b"a/b/c.md")]))[..], &ROOMY).unwrap()[0].path(), "a/b/c.md");
}

#[test]
fn refuses_a_symlink() {
    refused(&tar_of(&[file(b"ok.md"), (b"SOUL.md", EntryType::Symlink, b"", b"/etc/passwd")]), &["\"SOUL.md\"", "symlink"]);
}

#[test]
fn refuses_a_hard_link() {
    refused(&tar_of(&[(b"memory/shadow", EntryType::Link, b"", b"../../etc/shadow")]), &["\"memory/shadow\"", "hard link"]);
}

#[test]
fn refuses_devices_and_fifos() {
    refused(&tar_of(&[(b"dev/mem", EntryType::Char, b"", b"")]), &["\"dev/mem\"", "character device"]);
    refused(&tar_of(&[(b"dev/sda", EntryType::Block, b"", b"")]), &["\"dev/sda\"", "block device"]);
    refused(&tar_of(&[(b"pipe", EntryType::Fifo, b"", b"")]), &["\"pipe\"", "FIFO"]);
    refused(&tar_of(&[(b"contig", EntryType::Continuous, b"", b"")]), &["\"contig\"", "cannot be imported (tar type \"7\")"]);
    // A GNU sparse entry the tar crate cannot even parse is refused as damaged.
    refused(&tar_of(&[(b"sparse", EntryType::GNUSparse, b"", b"")]), &["damaged"]);
}

#[test]
fn refuses_paths_out_of_place() {
    for bad in [&b"../escape"[..], b"/etc/passwd", b"a/../../b", b"./SOUL.md", b"a//b", b"memory/."] {
        let name = std::str::from_utf8(bad).unwrap();
        refused(&tar_of(&[file(b"fine.md"), file(bad)]), &[&format!("{name:?}"), "not a plain relative path"]);
    }
    // Past what a header's name can hold, through a GNU long name.
    let deep = "d/".repeat(65) + "f";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    b.append_data(&mut h, &deep, &b""[..]).unwrap();
    refused(&b.into_inner().unwrap(), &["nests deeper than 64"]);
}

#[test]
fn refuses_a_nul_in_a_long_name() {
    let t = tar_of(&[(b"././@LongLink", EntryType::GNULongName, b"a\0b\0", b""), file(b"x")]);
    refused(&t, &["\"a\\0b\"", "not a plain relative path"]);
}

#[test]
fn refuses_a_duplicate_path() {
    refused(&tar_of(&[file(b"SOUL.md"), file(b"memory/x.md"), file(b"SOUL.md")]), &["\"SOUL.md\"", "twice"]);
    refused(&tar_of(&[(b"memory", EntryType::Directory, b"", b""), file(b"memory")]), &["\"memory\"", "twice"]);
}

#[test]
fn refuses_a_path_beneath_a_file() {
    refused(&tar_of(&[file(b"memory"), file(b"memory/x.md")]), &["\"memory/x.md\"", "inside \"memory\", which is a file"]);
    refused(&tar_of(&[file(b"memory/x.md"), file(b"memory")]), &["\"memory\"", "other entries are inside it"]);
}

#[test]
fn refuses_a_name_that_is_not_utf8() {
    refused(&tar_of(&[(b"bad\xff.md", EntryType::Regular, b"x", b"")]), &["\"bad\\xff.md\"", "not UTF-8"]);
}

#[test]
fn refuses_garbage_and_damage() {
    assert!(matches!(read_archive(&b""[..], &ROOMY), Err(ArchiveError::Refused(m)) if m.contains("empty")));
    assert!(matches!(read_archive(&b"PK\x03\x04 this is a zip"[..], &ROOMY), Err(ArchiveError::Refused(m)) if m.contains("not a .tar.gz")));
    let mut a = export(&[Item::File { path: "SOUL.md".into(), mode: 0o644, bytes: b"soul".repeat(1000) }]);
    // The CRC is in the last 8 bytes: a flipped bit there is noticed.
    let n = a.len();
    a[n - 6] ^= 1;
    assert!(matches!(read_archive(&a[..], &ROOMY), Err(ArchiveError::Refused(m)) if m.contains("damaged")));
    // Cut short in the middle of a file: damaged too, and the message says where.
    let a = export(&[Item::File { path: "a.md".into(), mode: 0o644, bytes: (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect() }]);
    match read_archive(&a[..a.len() / 2], &ROOMY) {
        Err(ArchiveError::Refused(m)) => assert!(m.contains("damaged") && m.contains("\"a.md\""), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_source_that_fails_is_an_io_error() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the upload broke"))
        }
    }
    let a = export(&[Item::File { path: "a".into(), mode: 0o644, bytes: vec![1; 10] }]);
    let got = read_archive(std::io::Read::chain(&a[..20], Broken), &ROOMY);
    assert!(matches!(got, Err(ArchiveError::Io(ref e)) if e.kind() == std::io::ErrorKind::ConnectionReset), "{got:?}");
}

#[test]
fn a_zip_bomb_is_refused_without_allocating_it() {
    // One file of 64 MiB of zeros: about 64 KiB gzipped, made streaming.
    let size: u64 = 64 << 20;
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_path("memory/bomb.md").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, std::io::repeat(0).take(size)).unwrap();
    let bomb = b.into_inner().unwrap().finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let (got, peak) = peak_of(|| read_archive(&bomb[..], &limits(1 << 20, 100)));
    too_large(got, &["\"memory/bomb.md\"", "1048576 bytes"]);
    assert!(peak < 1 << 20, "the largest allocation was {peak} bytes");
    // Within a quota that holds it, it is read whole.
    let got = read_archive(&bomb[..], &limits(size, 100)).unwrap();
    assert!(matches!(&got[..], [Item::File { bytes, .. }] if bytes.len() as u64 == size));
    // Files that fit one by one but not together stop at the one past the quota.
    let t = tar_of(&[(b"a", EntryType::Regular, &[1; 600], b""), (b"b", EntryType::Regular, &[2; 600], b"")]);
    too_large(read_archive(&gz(&t)[..], &limits(1000, 100)), &["\"b\"", "1000 bytes"]);
}

#[test]
fn a_stream_of_padding_is_bounded_too() {
    // A valid empty tar followed by 70 MiB of zeros: no file, no entry, yet it stops.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut std::io::repeat(0).take(70 << 20), &mut e).unwrap();
    let bomb = e.finish().unwrap();
    too_large(read_archive(&bomb[..], &limits(1 << 20, 10)), &["expands to more than"]);
    // Under the bound, the same padding is read and the archive is empty.
    assert_eq!(read_archive(&bomb[..], &limits(8 << 20, 10)).unwrap(), vec![]);
}

#[test]
fn a_header_past_the_budget_is_refused_without_reading() {
    // A header claiming 1 TiB and nothing after it: refused as too large, not as cut short.
    let mut t = header(b"huge.bin", EntryType::Regular, 1 << 40, b"").as_bytes().to_vec();
    t.extend_from_slice(&[0xAA; 100]);
    too_large(read_archive(&t[..], &ROOMY), &["\"huge.bin\""]);
    too_large(read_archive(&gz(&t)[..], &ROOMY), &["\"huge.bin\""]);
}

#[test]
fn the_bytes_read_count_not_the_claim() {
    let l = limits(10, 10);
    let mut budget = Budget { limits: &l, what: "the archive", bytes: 0, entries: 0 };
    // Claims 5, gives 20.
    assert!(matches!(budget.read("liar", 5, &[0u8; 20][..]), Err(Fail::Archive(ArchiveError::TooLarge(m))) if m.contains("\"liar\"")));
    // Claims 100, would give 3: refused on the claim.
    assert!(matches!(budget.read("big", 100, &[0u8; 3][..]), Err(Fail::Archive(ArchiveError::TooLarge(_)))));
    assert_eq!(budget.read("a", 6, &[1u8; 6][..]).ok(), Some(vec![1; 6]));
    assert_eq!(budget.read("b", 4, &[2u8; 4][..]).ok(), Some(vec![2; 4]));
    assert!(matches!(budget.read("c", 0, &[3u8; 1][..]), Err(Fail::Archive(ArchiveError::TooLarge(_)))));
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..11).map(|i| format!("memory/{i:02}.md")).collect();
    let entries: Vec<_> = names.iter().map(|n| file(n.as_bytes())).collect();
    too_large(read_archive(&gz(&tar_of(&entries))[..], &limits(1 << 20, 10)), &["more than 10 files and directories", "\"memory/10.md\""]);
    assert_eq!(read_archive(&gz(&tar_of(&entries[..10]))[..], &limits(1 << 20, 10)).unwrap().len(), 10);
}

fn workspace() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("SOUL.md"), "# soul").unwrap();
    std::fs::write(d.path().join("USER.md"), "# user").unwrap();
    std::fs::create_dir(d.path().join("memory")).unwrap();
    std::fs::write(d.path().join("memory/x.md"), "facts").unwrap();
    std::fs::create_dir(d.path().join("sessions")).unwrap();
    std::fs::write(d.path().join("sessions/main.jsonl"), "{}\n").unwrap();
    std::fs::set_permissions(d.path().join("memory"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(d.path().join("sessions"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(d.path().join("SOUL.md"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(d.path().join("USER.md"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(d.path().join("memory/x.md"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(d.path().join("sessions/main.jsonl"), std::fs::Permissions::from_mode(0o600)).unwrap();
    d
}

fn folder_refused(dir: &std::path::Path, words: &[&str]) {
    match read_folder(dir, &ROOMY) {
        Err(ArchiveError::Refused(m)) => {
            for w in words {
                assert!(m.contains(w), "{m:?} should say {w:?}");
            }
        }
        other => panic!("expected a refusal saying {words:?}, got {other:?}"),
    }
}

#[test]
fn reads_a_workspace_folder() {
    let d = workspace();
    let got = read_folder(d.path(), &ROOMY).unwrap();
    assert_eq!(
        got,
        vec![
            Item::File { path: "SOUL.md".into(), mode: 0o755, bytes: b"# soul".to_vec() },
            Item::File { path: "USER.md".into(), mode: 0o600, bytes: b"# user".to_vec() },
            Item::Dir { path: "memory".into(), mode: 0o750 },
            Item::File { path: "memory/x.md".into(), mode: 0o640, bytes: b"facts".to_vec() },
            Item::Dir { path: "sessions".into(), mode: 0o700 },
            Item::File { path: "sessions/main.jsonl".into(), mode: 0o600, bytes: b"{}\n".to_vec() },
        ]
    );
    // What a folder gives, an archive carries unchanged.
    assert_eq!(read_archive(&export(&got)[..], &ROOMY).unwrap(), got);
}

#[test]
fn a_folder_with_a_symlink_is_refused() {
    let d = workspace();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("memory/link.md")).unwrap();
    folder_refused(d.path(), &["\"memory/link.md\"", "symlink"]);
    let d = workspace();
    std::os::unix::fs::symlink("/etc", d.path().join("sessions/etc")).unwrap();
    folder_refused(d.path(), &["\"sessions/etc\"", "symlink"]);
    // The folder itself as a link is not opened.
    let d = workspace();
    let outer = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(d.path(), outer.path().join("ws")).unwrap();
    assert!(matches!(read_folder(&outer.path().join("ws"), &ROOMY), Err(ArchiveError::Io(_))));
}

#[test]
fn a_folder_with_a_fifo_or_a_socket_is_refused() {
    let d = workspace();
    rustix::fs::mknodat(rustix::fs::CWD, d.path().join("sessions/pipe").as_path(), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
    // A FIFO is not waited on: the refusal comes at once.
    folder_refused(d.path(), &["\"sessions/pipe\"", "FIFO"]);
    let d = workspace();
    let _listener = std::os::unix::net::UnixListener::bind(d.path().join("memory/sock")).unwrap();
    folder_refused(d.path(), &["\"memory/sock\"", "socket"]);
}

#[test]
fn a_folder_is_bounded_like_an_archive() {
    let d = workspace();
    std::fs::write(d.path().join("memory/big.md"), vec![b'x'; 2000]).unwrap();
    too_large(read_folder(d.path(), &limits(1000, 100)), &["\"memory/big.md\"", "1000 bytes"]);
    // A sparse file of 1 TiB is refused by its size, before it is read.
    let d = workspace();
    std::fs::File::create(d.path().join("sparse")).unwrap().set_len(1 << 40).unwrap();
    too_large(read_folder(d.path(), &ROOMY), &["\"sparse\""]);
    too_large(read_folder(workspace().path(), &limits(1 << 20, 5)), &["more than 5 files and directories", "\"sessions/main.jsonl\""]);
    // Nesting past 64 directories.
    let d = tempfile::tempdir().unwrap();
    let deep: std::path::PathBuf = (0..65).map(|_| "d").collect();
    std::fs::create_dir_all(d.path().join(&deep)).unwrap();
    folder_refused(d.path(), &["nests deeper than 64"]);
    let ok: std::path::PathBuf = (0..64).map(|_| "d").collect();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join(&ok)).unwrap();
    assert_eq!(read_folder(d.path(), &ROOMY).unwrap().len(), 64);
}

#[test]
fn a_folder_name_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let d = workspace();
    std::fs::write(d.path().join("memory").join(std::ffi::OsStr::from_bytes(b"bad\xff.md")), "x").unwrap();
    folder_refused(d.path(), &["\"memory/bad\\xff.md\"", "not UTF-8"]);
}
