//! libiscsi's conformance suite (`iscsi-test-cu`, from Debian's libiscsi-bin) as a test
//! harness, independent of which target serves the LUN: runs the suite, reads its results,
//! tells which tests did not pass and compares them with a list of expected ones.
//!
//! What counts as passed: a test CUnit reports as passed that printed no `[SKIPPED]` line.
//! libiscsi "skips" a test (the target lacks a command, the LU is not removable, no
//! multipath URL was given ...) by printing `[SKIPPED] reason` and returning, which CUnit
//! records as a success. CUnit's XML mode (`-x`) records only the verdicts, and the messages
//! it prints then carry no test name; its verbose console mode prints each test's name, the
//! messages the test printed, and the verdict with each failed assertion. So the suite runs
//! once, in that mode, and its console output is the record (kept as `iscsi-test-cu.out`).
//! A test absent from it (its suite could not log in, or iscsi-test-cu died) counts as not
//! run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first initiator name the suite logs in with.
pub const INITIATOR_1: &str = "iqn.2016-06.io.ferry:conformance-1";
/// The second one (second I_T nexus: reservations, PGR, IT nexus loss).
pub const INITIATOR_2: &str = "iqn.2016-06.io.ferry:conformance-2";

/// The longest the whole suite may take before it is killed (`-t ALL` takes about 20 s
/// against tgtd here).
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// CUnit failures: `file:line condition` of each failed assertion.
    Failed(Vec<String>),
    /// Passed in CUnit's terms after printing `[SKIPPED] reason`.
    Skipped(String),
    /// Absent from the output: its suite failed to set up (the reason), or the run ended.
    NotRun(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Outcome::Passed
    }

    fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "FAILED",
            Outcome::Skipped(_) => "SKIPPED",
            Outcome::NotRun(_) => "NOT RUN",
        }
    }

    fn detail(&self) -> String {
        match self {
            Outcome::Passed => String::new(),
            Outcome::Failed(c) => c.first().cloned().unwrap_or_default(),
            Outcome::Skipped(s) | Outcome::NotRun(s) => s.clone(),
        }
    }
}

/// Every test of one suite run, by `Suite.Test` name (the names `iscsi-test-cu -l` lists
/// under the family `ALL`, without it), and how long it took.
pub struct SuiteRun {
    pub outcomes: BTreeMap<String, Outcome>,
    pub elapsed: Duration,
}

impl SuiteRun {
    /// "230 tests in 20.1 s: 207 passed, 8 failed, 15 skipped, 0 not run".
    pub fn summary(&self) -> String {
        let count = |label: &str| self.outcomes.values().filter(|o| o.label() == label).count();
        format!(
            "{} tests in {:.1} s: {} passed, {} failed, {} skipped, {} not run",
            self.outcomes.len(),
            self.elapsed.as_secs_f64(),
            count("passed"),
            count("FAILED"),
            count("SKIPPED"),
            count("NOT RUN")
        )
    }
}

/// The tests `iscsi-test-cu -l` lists in the family ALL, as `Suite.Test`.
pub fn all_tests() -> BTreeSet<String> {
    let out = Command::new("iscsi-test-cu")
        .arg("-l")
        .output()
        .expect("run iscsi-test-cu -l (scripts/iscsi/setup.sh installs libiscsi-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    let tests: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ALL."))
        .filter(|l| l.matches('.').count() == 1)
        .map(str::to_string)
        .collect();
    assert!(tests.len() > 100, "iscsi-test-cu -l listed only {} tests:\n{text}", tests.len());
    tests
}

/// Runs `iscsi-test-cu -d -S -t ALL -i INITIATOR_1 -I INITIATOR_2 URL` in `dir` and
/// returns every listed test's outcome (see the module's notes). `-d` allows the tests
/// that write, `-S` the SANITIZE tests (both destroy the LUN's data).
/// A second URL (the same LU through another portal) enables the MultipathIO tests.
pub fn run_suite(urls: &[&str], dir: &Path) -> SuiteRun {
    let listed = all_tests();
    let start = Instant::now();
    let out = run_cu(dir, &["-d", "-S", "-t", "ALL"], urls);
    let elapsed = start.elapsed();
    let parsed = parse_verbose(&out);
    for name in parsed.tests.keys() {
        assert!(listed.contains(name), "the output names {name}, which iscsi-test-cu -l does not list:\n{out}");
    }
    let outcomes = listed
        .iter()
        .map(|name| {
            let suite = name.split('.').next().unwrap();
            let o = parsed.tests.get(name).cloned().unwrap_or_else(|| {
                Outcome::NotRun(parsed.suite_failures.get(suite).cloned().unwrap_or_else(|| "not in the output".into()))
            });
            (name.clone(), o)
        })
        .collect();
    SuiteRun { outcomes, elapsed }
}

/// Runs the tests matching `pattern` (`-t`) against `urls`; their outcomes.
pub fn run_subset(urls: &[&str], pattern: &str, dir: &Path) -> BTreeMap<String, Outcome> {
    parse_verbose(&run_cu(dir, &["-d", "-t", pattern], urls)).tests
}

/// As `run_subset`, with the SANITIZE tests allowed (`-S`).
pub fn run_subset_sanitize(urls: &[&str], pattern: &str, dir: &Path) -> BTreeMap<String, Outcome> {
    parse_verbose(&run_cu(dir, &["-d", "-S", "-t", pattern], urls)).tests
}

/// Runs iscsi-test-cu with `args`, the two initiator names and `urls` in `dir`, with a
/// deadline; returns stdout and stderr. Its exit code says only whether some test failed.
fn run_cu(dir: &Path, args: &[&str], urls: &[&str]) -> String {
    let out_path = dir.join("iscsi-test-cu.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("iscsi-test-cu")
        .current_dir(dir)
        .args(args)
        .args(["-i", INITIATOR_1, "-I", INITIATOR_2])
        .args(urls)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run iscsi-test-cu (scripts/iscsi/setup.sh installs libiscsi-bin)");
    let deadline = Instant::now() + SUITE_DEADLINE;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "iscsi-test-cu ran longer than {SUITE_DEADLINE:?}; its output:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned()
}

/// What CUnit's verbose console mode printed.
#[derive(Debug, Default)]
pub struct Verbose {
    /// `Suite.Test` -> Passed, Skipped (its first `[SKIPPED]` message) or Failed (the
    /// `[FAILED]` messages it printed, then each failed assertion).
    pub tests: BTreeMap<String, Outcome>,
    /// Suites whose set-up (login) failed; their tests are absent.
    pub suite_failures: BTreeMap<String, String>,
}

/// Parses CUnit's verbose console output: `Suite: S`, then for each test `  Test: T ...`,
/// the messages it printed, and `passed` or `FAILED` (at the start of a line or right after
/// `...`, with possibly the suite clean-up's messages after it; or ending a message's line), after FAILED one line per failed assertion
/// (`    1. file.c:38  - CU_ASSERT...`). A suite whose set-up failed prints
/// `WARNING - Suite initialization failed for 'S'.` instead of its tests.
pub fn parse_verbose(out: &str) -> Verbose {
    struct Current {
        name: String,
        skipped: Option<String>,
        failed: Vec<String>,
        verdict: Option<bool>,
    }
    let mut v = Verbose::default();
    let mut suite = String::new();
    let mut cur: Option<Current> = None;
    let finish = |cur: &mut Option<Current>, v: &mut Verbose| {
        // A test with no verdict (the run ended inside it) is left out: absent, not run.
        if let Some(Current { name, skipped, failed, verdict: Some(passed) }) = cur.take() {
            let o = match (passed, skipped) {
                (true, None) => Outcome::Passed,
                (true, Some(why)) => Outcome::Skipped(why),
                (false, _) => Outcome::Failed(failed),
            };
            v.tests.insert(name, o);
        }
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            finish(&mut cur, &mut v);
            suite = s.trim().to_string();
            continue;
        }
        if let Some(i) = line.find("Suite initialization failed for '") {
            finish(&mut cur, &mut v);
            let rest = &line[i + "Suite initialization failed for '".len()..];
            let name = rest.split('\'').next().unwrap_or(rest);
            v.suite_failures.insert(name.to_string(), line.trim().to_string());
            continue;
        }
        let mut body = line;
        if let Some(t) = line.strip_prefix("  Test: ") {
            finish(&mut cur, &mut v);
            let (name, after) = t.split_once(" ...").unwrap_or((t, ""));
            let name = format!("{suite}.{}", name.trim());
            cur = Some(Current { name, skipped: None, failed: Vec::new(), verdict: None });
            body = after;
        }
        let Some(c) = cur.as_mut() else { continue };
        match c.verdict {
            // The numbered assertion lines after FAILED.
            Some(false) => {
                let t = body.trim_start();
                if let Some((n, rest)) = t.split_once(". ") {
                    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                        c.failed.push(rest.replace("  - ", " "));
                    }
                }
                continue;
            }
            Some(true) => continue,
            None => {}
        }
        // The verdict starts a line (or follows " ..." directly), where the suite's clean-up
        // may print more after it on the same line; or it ends the line of a message that
        // had no newline.
        if body.starts_with("passed") {
            c.verdict = Some(true);
            continue;
        }
        if body.starts_with("FAILED") {
            c.verdict = Some(false);
            continue;
        }
        if let Some(i) = body.find("[SKIPPED]") {
            c.skipped.get_or_insert_with(|| body[i + "[SKIPPED]".len()..].trim().to_string());
        }
        if let Some(i) = body.find("[FAILED]") {
            c.failed.push(body[i + "[FAILED]".len()..].trim().to_string());
        }
        let b = body.trim_end();
        if b.ends_with("passed") {
            c.verdict = Some(true);
        } else if b.ends_with("FAILED") {
            c.verdict = Some(false);
        }
    }
    finish(&mut cur, &mut v);
    v
}

/// The expected non-passing tests listed in a Markdown section: every line
/// `` - `Suite.Test`: reason `` between the heading `## {heading}` and the next `## `.
pub fn expected_from_markdown(md: &str, heading: &str) -> BTreeMap<String, String> {
    let start = md
        .lines()
        .position(|l| l.trim_start_matches('#').trim() == heading && l.starts_with("## "))
        .unwrap_or_else(|| panic!("no section \"## {heading}\""));
    md.lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("- `"))
        .map(|l| {
            let (name, reason) = l.split_once('`').expect("a closing backquote");
            let reason = reason.trim_start_matches(':').trim();
            assert!(!reason.is_empty(), "{name} is listed without a reason");
            (name.to_string(), reason.to_string())
        })
        .collect()
}

/// Compares a run with the expected non-passing tests and prints a table of every test
/// that did not pass or is listed. Returns the problems: a test that did not pass and is
/// not listed, a listed test that passed, a listed name the suite does not have.
pub fn compare(run: &SuiteRun, expected: &BTreeMap<String, String>, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for (name, o) in &run.outcomes {
        let listed = expected.get(name);
        let verdict = match (o.passed(), listed) {
            (true, None) => continue,
            (false, Some(_)) => "as listed",
            (false, None) => {
                problems.push(format!("{name} {}: {} (not listed)", o.label(), o.detail()));
                "NOT LISTED"
            }
            (true, Some(_)) => {
                problems.push(format!("{name} passes but is listed as not passing"));
                "LISTED, PASSES"
            }
        };
        rows.push((name.as_str(), o.label(), verdict, o.detail(), listed.map(String::as_str).unwrap_or("")));
    }
    for name in expected.keys() {
        if !run.outcomes.contains_key(name) {
            problems.push(format!("{name} is listed but iscsi-test-cu has no such test"));
        }
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    eprintln!("libiscsi conformance, {what}: {}", run.summary());
    eprintln!("{:<w$}  {:<8}  {:<14}  what happened | listed reason", "test", "result", "verdict");
    for (name, label, verdict, detail, reason) in rows {
        eprintln!("{name:<w$}  {label:<8}  {verdict:<14}  {detail} | {reason}");
    }
    problems
}

/// Whether a login to `url` (an `iscsi://` URL) and an INQUIRY through it succeed
/// (`iscsi-inq`), with its output.
pub fn inquiry(url: &str) -> (bool, String) {
    let out = Command::new("iscsi-inq")
        .args(["-i", INITIATOR_1, url])
        .stdin(Stdio::null())
        .output()
        .expect("run iscsi-inq (scripts/iscsi/setup.sh installs libiscsi-bin)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
