//! libiscsi's conformance suite (`iscsi-test-cu -d -t ALL`, 230 tests in Debian 12's
//! libiscsi-bin 1.19) against a real target on 127.0.0.1, without and with CHAP: every test
//! that does not pass (failed, skipped, or not run) must be listed with its reason, and
//! every listed test must still not pass, so that the list stays exact.
//!
//! - ferryd: the list is the section "libiscsi conformance: tests that do not pass" of
//!   docs/iscsi.md.
//! - Debian's tgtd: the same harness against a target that exists independently of Ferry,
//!   with its own list below ([`TGTD_NOT_PASSING`]): proof that the harness tells failures,
//!   skips and passes apart.
//!
//! Needs `scripts/iscsi/setup.sh` (libiscsi-bin, tgt) and root (tgtd). The harness is in
//! tests/common/libiscsi.rs, tgtd's set-up in tests/common/tgtd.rs.

mod common;
#[path = "common/libiscsi.rs"]
mod libiscsi;
#[path = "common/tgtd.rs"]
mod tgtd;

use common::Ferryd;
use libiscsi::{Outcome, SuiteRun};
use serde_json::json;
use std::collections::BTreeMap;

/// The heading in docs/iscsi.md whose list the ferryd runs are held to.
const DOC_SECTION: &str = "libiscsi conformance: tests that do not pass";
/// CHAP credentials for the CHAP runs (no `%`, `@` or `:`: they go into the URL).
const CHAP_USER: &str = "conformance";
const CHAP_SECRET: &str = "conformance-chap-secret";
/// The LUN of the runs: 128 MiB of 512-byte blocks, as on both targets.
const LUN_MIB: u64 = 128;
const BLOCK: u32 = 512;
/// The physical block size of ferryd's LUN.
const PHYSICAL_BLOCK: u32 = 4096;

/// What Debian 12's tgtd (1:1.0.85-1+deb12u1) does not pass with libiscsi-bin 1.19.0-3, on
/// a 128 MiB `rdwr` file LUN in /dev/shm, as measured with this harness. The first eight
/// are the failures /work/shared/research/targets.md §2 measured; the rest are tests
/// libiscsi skips (printing `[SKIPPED]`, which CUnit counts as passed).
const TGTD_NOT_PASSING: &[(&str, &str)] = &[
    // Failures (CUnit assertions).
    ("GetLBAStatus.BeyondEol", "FAILED: GET LBA STATUS beyond the end succeeds"),
    ("PrinServiceactionRange.Range", "FAILED: PERSISTENT RESERVE IN service action 3 refused"),
    ("ProutReserve.OwnershipEA", "FAILED: unit attention where the PRIN was expected to succeed"),
    ("ProutReserve.OwnershipEARO", "FAILED: unit attention where the PRIN was expected to succeed"),
    ("ProutReserve.OwnershipWE", "FAILED: unit attention where the PRIN was expected to succeed"),
    ("ProutReserve.OwnershipWERO", "FAILED: unit attention where the PRIN was expected to succeed"),
    ("Reserve6.2Initiators", "FAILED: MODE SENSE from the second initiator succeeds under RESERVE(6)"),
    ("iSCSIdatasn.iSCSIDataSnInvalid", "FAILED: Data-Out with a wrong DataSN accepted"),
    // Skips: commands tgtd does not implement, a LU that is not thin-provisioned, removable
    // or write-protected, and no second (multipath) URL.
    ("CompareAndWrite.DpoFua", "SKIPPED: COMPAREANDWRITE is not implemented"),
    ("CompareAndWrite.InvalidDataOutSize", "SKIPPED: Logical unit is fully provisioned"),
    ("CompareAndWrite.Miscompare", "SKIPPED: COMPAREANDWRITE is not implemented"),
    ("CompareAndWrite.Simple", "SKIPPED: COMPAREANDWRITE is not implemented"),
    ("CompareAndWrite.Unwritten", "SKIPPED: COMPAREANDWRITE is not implemented"),
    ("ExtendedCopy.DescrLimits", "SKIPPED: RECEIVECOPYRESULT is not implemented"),
    ("ExtendedCopy.DescrType", "SKIPPED: EXTENDEDCOPY is not implemented"),
    ("ExtendedCopy.ParamHdr", "SKIPPED: EXTENDEDCOPY is not implemented"),
    ("ExtendedCopy.Simple", "SKIPPED: EXTENDEDCOPY is not implemented"),
    ("ExtendedCopy.ValidSegDescr", "SKIPPED: EXTENDEDCOPY is not implemented"),
    ("ExtendedCopy.ValidTgtDescr", "SKIPPED: EXTENDEDCOPY is not implemented"),
    ("GetLBAStatus.UnmapSingle", "SKIPPED: Logical unit is fully provisioned"),
    ("Inquiry.BlockLimits", "SKIPPED: Logical unit is fully provisioned"),
    ("MultipathIO.CompareAndWrite", "SKIPPED: Multipath unavailable"),
    ("MultipathIO.CompareAndWriteAsync", "SKIPPED: Multipath unavailable"),
    ("MultipathIO.Reset", "SKIPPED: Multipath unavailable"),
    ("MultipathIO.Simple", "SKIPPED: Multipath unavailable"),
    ("PreventAllow.2ITNexuses", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.ColdReset", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.Eject", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.ITNexusLoss", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.LUNReset", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.Logout", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.Simple", "SKIPPED: Logical unit is not removable."),
    ("PreventAllow.WarmReset", "SKIPPED: Logical unit is not removable."),
    ("ReadDefectData10.Simple", "SKIPPED: READDEFECTDATA10 is not implemented"),
    ("ReadDefectData12.Simple", "SKIPPED: READDEFECTDATA12 is not implemented"),
    ("ReadOnly.ReadOnlySBC", "SKIPPED: Logical unit is not write-protected."),
    ("ReceiveCopyResults.CopyStatus", "SKIPPED: RECEIVECOPYRESULT is not implemented"),
    ("ReceiveCopyResults.OpParams", "SKIPPED: RECEIVECOPYRESULT is not implemented"),
    ("ReportSupportedOpcodes.OneCommand", "SKIPPED: REPORT_SUPPORTED_OPCODES is not implemented"),
    ("Reserve6.TargetColdReset", "SKIPPED: Task Management function for ColdReset is not working/implemented"),
    ("Reserve6.TargetWarmReset", "SKIPPED: Task Management function for WarmReset is not working/implemented"),
    ("Sanitize.BlockErase", "SKIPPED: SANITIZE BLOCK_ERASE is not implemented according to REPORT_SUPPORTED_OPCODES"),
    ("Sanitize.BlockEraseReserved", "SKIPPED: SANITIZE is not implemented"),
    ("Sanitize.CryptoErase", "SKIPPED: SANITIZE CRYPTO_ERASE is not implemented according to REPORT_SUPPORTED_OPCODES"),
    ("Sanitize.CryptoEraseReserved", "SKIPPED: SANITIZE is not implemented"),
    (
        "Sanitize.ExitFailureMode",
        "SKIPPED: SANITIZE EXIT FAILURE MODE is not implemented according to REPORT_SUPPORTED_OPCODES",
    ),
    ("Sanitize.InvalidServiceAction", "SKIPPED: SANITIZE is not implemented"),
    ("Sanitize.Overwrite", "SKIPPED: SANITIZE OVERWRITE is not implemented according to REPORT_SUPPORTED_OPCODES"),
    ("Sanitize.OverwriteReserved", "SKIPPED: SANITIZE is not implemented"),
    ("Sanitize.Readonly", "SKIPPED: SANITIZE OVERWRITE is not implemented according to REPORT_SUPPORTED_OPCODES"),
    ("Sanitize.Reservations", "SKIPPED: SANITIZE OVERWRITE is not implemented according to REPORT_SUPPORTED_OPCODES"),
    ("Sanitize.Reset", "SKIPPED: SANITIZE OVERWRITE is not implemented according to REPORT_SUPPORTED_OPCODES"),
    ("StartStopUnit.Simple", "SKIPPED: Media is not removable"),
    ("Unmap.Simple", "SKIPPED: Logical unit is fully provisioned"),
    ("Unmap.VPD", "SKIPPED: UNMAP is not implemented"),
    ("Unmap.ZeroBlocks", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteAtomic16.BeyondEol", "SKIPPED: WRITEATOMIC16 is not implemented"),
    ("WriteAtomic16.DpoFua", "SKIPPED: WRITEATOMIC16 is not implemented"),
    ("WriteAtomic16.Simple", "SKIPPED: WRITEATOMIC16 is not implemented"),
    ("WriteAtomic16.VPD", "SKIPPED: WRITEATOMIC16 is not implemented"),
    ("WriteAtomic16.WriteProtect", "SKIPPED: WRITEATOMIC16 is not implemented"),
    ("WriteAtomic16.ZeroBlocks", "SKIPPED: WRITEATOMIC16 is not implemented"),
    ("WriteSame10.InvalidDataOutSize", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame10.Unmap", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame10.UnmapUnaligned", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame10.UnmapUntilEnd", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame16.InvalidDataOutSize", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame16.Unmap", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame16.UnmapUnaligned", "SKIPPED: Logical unit is fully provisioned"),
    ("WriteSame16.UnmapUntilEnd", "SKIPPED: Logical unit is fully provisioned"),
];

/// The list above as a map.
fn tgtd_expected() -> BTreeMap<String, String> {
    TGTD_NOT_PASSING.iter().map(|(n, r)| (n.to_string(), r.to_string())).collect()
}

/// The list docs/iscsi.md keeps for ferryd.
fn ferry_expected() -> BTreeMap<String, String> {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/iscsi.md")).expect("docs/iscsi.md");
    libiscsi::expected_from_markdown(&md, DOC_SECTION)
}

/// Runs the suite against `url` and fails the test, after printing the table, unless the
/// tests that did not pass are exactly `expected`.
fn run_and_compare(urls: &[&str], expected: &BTreeMap<String, String>, what: &str) -> SuiteRun {
    common::install_tools("scripts/iscsi/setup.sh");
    let dir = common::scratch_dir("iscsi-cu");
    let run = libiscsi::run_suite(urls, &dir);
    let problems = libiscsi::compare(&run, expected, what);
    assert!(problems.is_empty(), "libiscsi conformance against {what}:\n  {}", problems.join("\n  "));
    run
}

/// The target's name on ferryd.
const FERRY_IQN: &str = "iqn.2016-06.io.ferry:conformance";

/// A ferryd serving a 128 MiB malloc bdev as LUN 0 of [`FERRY_IQN`] on two portals at
/// 127.0.0.1 (portal group 1, initiator group 2 open to any initiator), with CHAP required
/// (auth group 1) when `chap`; returns it and the LUN's URLs through each portal (with the
/// credentials when `chap`): the second one is the suite's multipath URL.
fn ferryd_target(chap: bool) -> (Ferryd, Vec<String>) {
    let dir = common::scratch_dir("iscsi-ferryd");
    let d = Ferryd::start_in(dir.clone(), &["-m", "0x3", "-S", dir.to_str().unwrap()]);
    let port = common::free_port();
    let port2 = common::free_port();
    let num_blocks = (LUN_MIB << 20) / u64::from(BLOCK);
    // 4 KiB physical blocks (LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 3): libiscsi's
    // unaligned-unmap and data-out-size tests run only when a physical block holds several.
    d.ok(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": num_blocks, "block_size": BLOCK, "physical_block_size": PHYSICAL_BLOCK}),
    );
    d.ok(
        "iscsi_create_portal_group",
        json!({"tag": 1, "portals": [
            {"host": "127.0.0.1", "port": port.to_string()},
            {"host": "127.0.0.1", "port": port2.to_string()}
        ]}),
    );
    d.ok("iscsi_create_initiator_group", json!({"tag": 2, "initiators": ["ANY"], "netmasks": ["ANY"]}));
    let mut node = json!({
        "name": FERRY_IQN,
        "alias_name": "conformance",
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
        "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "queue_depth": 64,
    });
    if chap {
        d.ok("iscsi_create_auth_group", json!({"tag": 1, "secrets": [{"user": CHAP_USER, "secret": CHAP_SECRET}]}));
        node["require_chap"] = json!(true);
        node["chap_group"] = json!(1);
    } else {
        node["disable_chap"] = json!(true);
    }
    d.ok("iscsi_create_target_node", node);
    let cred = if chap { format!("{CHAP_USER}%{CHAP_SECRET}@") } else { String::new() };
    let urls = [port, port2].iter().map(|p| format!("iscsi://{cred}127.0.0.1:{p}/{FERRY_IQN}/0")).collect();
    (d, urls)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// Serves `lun` (a `luns` entry for LUN 0) on a node `iqn` of its own, through the portal and
/// initiator groups of [`ferryd_target`]; returns its URL through the first portal.
fn own_node(d: &Ferryd, urls: &[String], iqn: &str, lun: serde_json::Value) -> String {
    d.ok(
        "iscsi_create_target_node",
        json!({
            "name": iqn, "alias_name": iqn.rsplit(':').next().unwrap_or(iqn),
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "luns": [lun],
            "queue_depth": 8, "disable_chap": true
        }),
    );
    urls[0].replace(FERRY_IQN, iqn)
}

#[test]
fn ferryd_passes_libiscsi_conformance_but_the_listed_tests() {
    let (_d, urls) = ferryd_target(false);
    run_and_compare(&refs(&urls), &ferry_expected(), "ferryd");
}

/// `ReadOnly.ReadOnlySBC` skips on the writable LU of the full runs; here it runs against a
/// write-protected one (a read-only logical volume) and must pass.
#[test]
fn ferryd_passes_the_read_only_tests_on_a_write_protected_lun() {
    let (d, urls) = ferryd_target(false);
    d.ok("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 65536, "block_size": BLOCK}));
    d.ok("bdev_lvol_create_lvstore", json!({"bdev_name": "Malloc1", "lvs_name": "lvs", "cluster_sz": 1048576}));
    d.ok("bdev_lvol_create", json!({"lvol_name": "ro", "size_in_mib": 8, "lvs_name": "lvs"}));
    d.ok("bdev_lvol_set_read_only", json!({"name": "lvs/ro"}));
    let url = own_node(&d, &urls, "iqn.2016-06.io.ferry:readonly", json!({"bdev_name": "lvs/ro", "lun_id": 0}));
    let dir = common::scratch_dir("iscsi-cu-ro");
    let outcomes = libiscsi::run_subset(&[&url], "SCSI.ReadOnly.*", &dir);
    let o = outcomes.get("ReadOnly.ReadOnlySBC").expect("the read-only test ran");
    assert!(o.passed(), "ReadOnly.ReadOnlySBC against a write-protected LU: {o:?}");
}

/// The PreventAllow and StartStopUnit tests that skip on the full runs' LU (its medium is
/// not removable) pass on a LU with a removable medium (`"removable": true`, a Ferry extension
/// of the LUN entry): eject and load, prevention per I_T nexus, cleared by nexus loss, logout,
/// LUN reset and target warm and cold resets.
#[test]
fn ferryd_passes_the_medium_removal_tests_on_a_removable_lun() {
    let (d, urls) = ferryd_target(false);
    d.ok("bdev_malloc_create", json!({"name": "Removable", "num_blocks": 16384, "block_size": BLOCK}));
    let iqn = "iqn.2016-06.io.ferry:removable";
    let url = own_node(&d, &urls, iqn, json!({"bdev_name": "Removable", "lun_id": 0, "removable": true}));
    let dir = common::scratch_dir("iscsi-cu-removable");
    let mut outcomes = libiscsi::run_subset(&[&url], "SCSI.PreventAllow.*", &dir);
    outcomes.extend(libiscsi::run_subset(&[&url], "SCSI.StartStopUnit.*", &dir));
    let expected = [
        "PreventAllow.Simple",
        "PreventAllow.Eject",
        "PreventAllow.Logout",
        "PreventAllow.WarmReset",
        "PreventAllow.ColdReset",
        "PreventAllow.LUNReset",
        "PreventAllow.2ITNexuses",
        "PreventAllow.ITNexusLoss",
        "StartStopUnit.Simple",
        "StartStopUnit.PwrCnd",
        "StartStopUnit.NoLoej",
    ];
    let failed: Vec<String> = expected
        .iter()
        .filter_map(|t| match outcomes.get(*t) {
            Some(o) if o.passed() => None,
            o => Some(format!("{t}: {o:?}")),
        })
        .collect();
    assert!(failed.is_empty(), "against a removable LU:\n{}", failed.join("\n"));
    assert_eq!(outcomes.len(), expected.len(), "exactly these ran: {:?}", outcomes.keys().collect::<Vec<_>>());
}

/// `Sanitize.Reset` fails in the full runs only because `Sanitize.Reservations` leaves the
/// second path's RESERVE(6) behind (see docs/iscsi.md); run alone it must pass: an overwrite
/// still in progress (NOT READY / SANITIZE IN PROGRESS) after ABORT TASK, ABORT TASK SET, LUN,
/// warm and cold resets and a new login, until it completes.
#[test]
fn ferryd_passes_sanitize_reset_run_alone() {
    let (_d, urls) = ferryd_target(false);
    let dir = common::scratch_dir("iscsi-cu-sanitize-reset");
    let outcomes = libiscsi::run_subset_sanitize(&refs(&urls), "SCSI.Sanitize.Reset", &dir);
    let o = outcomes.get("Sanitize.Reset").expect("the sanitize reset test ran");
    assert!(o.passed(), "Sanitize.Reset run alone: {o:?}");
}

/// `GetLBAStatus.UnmapSingle` fails on the full runs' LU (4 KiB physical blocks, where
/// libiscsi 1.19.0 expects the wrong first extent: see docs/iscsi.md); on a LU whose physical
/// block is its logical block it must pass.
#[test]
fn ferryd_passes_get_lba_status_unmap_single_with_one_block_per_physical_block() {
    let (d, urls) = ferryd_target(false);
    d.ok("bdev_malloc_create", json!({"name": "Malloc2", "num_blocks": 65536, "block_size": BLOCK}));
    let url = own_node(&d, &urls, "iqn.2016-06.io.ferry:flat", json!({"bdev_name": "Malloc2", "lun_id": 0}));
    let dir = common::scratch_dir("iscsi-cu-flat");
    let outcomes = libiscsi::run_subset(&[&url], "SCSI.GetLBAStatus.UnmapSingle", &dir);
    let o = outcomes.get("GetLBAStatus.UnmapSingle").expect("the test ran");
    assert!(o.passed(), "GetLBAStatus.UnmapSingle on a 512/512 LU: {o:?}");
}

#[test]
fn ferryd_passes_libiscsi_conformance_with_chap() {
    let (_d, urls) = ferryd_target(true);
    let bare = urls[0].replace(&format!("{CHAP_USER}%{CHAP_SECRET}@"), "");
    let (ok, out) = libiscsi::inquiry(&bare);
    assert!(!ok, "a login without CHAP succeeded on a node requiring CHAP:\n{out}");
    run_and_compare(&refs(&urls), &ferry_expected(), "ferryd with CHAP");
}

/// A tgtd on a free port with the conformance LUN.
fn tgtd_target(tag: &str) -> (tgtd::Tgtd, common::Scratch) {
    common::install_tools("scripts/iscsi/setup.sh");
    let dir = common::scratch_dir(tag);
    (tgtd::Tgtd::start(common::free_port(), LUN_MIB, BLOCK, &dir), dir)
}

#[test]
fn tgtd_fails_exactly_its_known_tests() {
    let (t, _dir) = tgtd_target("iscsi-tgtd");
    let run = run_and_compare(&[&t.url(None)], &tgtd_expected(), "tgtd");
    // Every failure category the harness tells apart shows up against tgtd.
    assert!(run.outcomes.values().any(|o| matches!(o, Outcome::Failed(_))));
    assert!(run.outcomes.values().filter(|o| o.passed()).count() > 150, "{}", run.summary());
}

#[test]
fn tgtd_fails_exactly_its_known_tests_with_chap() {
    let (t, _dir) = tgtd_target("iscsi-tgtd-chap");
    t.require_chap(CHAP_USER, CHAP_SECRET);
    let (ok, out) = libiscsi::inquiry(&t.url(None));
    assert!(!ok, "tgtd let a login without CHAP in:\n{out}");
    let (ok, out) = libiscsi::inquiry(&t.url(Some((CHAP_USER, "wrong-secret-12345"))));
    assert!(!ok, "tgtd let a login with a wrong secret in:\n{out}");
    run_and_compare(&[&t.url(Some((CHAP_USER, CHAP_SECRET)))], &tgtd_expected(), "tgtd with CHAP");
}

/// The harness's parsers on fixed text (CUnit's verbose output as iscsi-test-cu 1.19
/// prints it, a Markdown list).
#[test]
fn parses_cunit_verbose_output_and_the_doc_list() {
    let out = "Suite: CompareAndWrite\n  Test: Simple ...    [SKIPPED] CAW is not implemented.\n    [SKIPPED] again\npassed\n\
        \x20 Test: DpoFua ...passed\nSuite: GetLBAStatus\n  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful\nFAILED\n\
        \x20   1. t.c:38  - CU_ASSERT_EQUAL(_r,0)\n    2. t.c:40  - CU_ASSERT(c)\n\
        \x20 Test: UnmapSingle ...    [SKIPPED] fully provisioned\npassed\n\
        \x20 Test: LUNReset ...passed    [FAILED] PRIN command (the suite's clean-up)\n\n\
        \nWARNING - Suite initialization failed for 'Inquiry'.\nSuite: Read6\n  Test: Cut ...\n";
    let v = libiscsi::parse_verbose(out);
    assert_eq!(v.tests["CompareAndWrite.Simple"], Outcome::Skipped("CAW is not implemented.".into()));
    assert_eq!(v.tests["CompareAndWrite.DpoFua"], Outcome::Passed);
    assert_eq!(
        v.tests["GetLBAStatus.BeyondEol"],
        Outcome::Failed(vec![
            "GET_LBA_STATUS successful".into(),
            "t.c:38 CU_ASSERT_EQUAL(_r,0)".into(),
            "t.c:40 CU_ASSERT(c)".into()
        ])
    );
    assert_eq!(v.tests["GetLBAStatus.UnmapSingle"], Outcome::Skipped("fully provisioned".into()));
    assert!(v.suite_failures["Inquiry"].contains("initialization failed"));
    assert!(!v.tests.contains_key("Read6.Cut"), "a test without a verdict is absent");
    assert_eq!(v.tests["GetLBAStatus.LUNReset"], Outcome::Passed);
    assert_eq!(v.tests.len(), 5);

    let md = "# x\n## Other\n- `A.B`: not this\n## libiscsi conformance: tests that do not pass\n\ntext\n\
        - `Reserve6.Simple`: no RESERVE(6)\n- `iSCSITMF.AbortTaskSimpleAsync`: reason: with colon\n## Next\n- `C.D`: no\n";
    let e = libiscsi::expected_from_markdown(md, DOC_SECTION);
    assert_eq!(e.len(), 2);
    assert_eq!(e["iSCSITMF.AbortTaskSimpleAsync"], "reason: with colon");
    // The list docs/iscsi.md keeps names only tests the suite has.
    common::install_tools("scripts/iscsi/setup.sh");
    let all = libiscsi::all_tests();
    for name in ferry_expected().keys() {
        assert!(all.contains(name), "docs/iscsi.md lists {name}, which iscsi-test-cu -l does not know");
    }
}
