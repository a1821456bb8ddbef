//! Side-by-side comparison of persistent-map with raw sqlx, redb, sled,
//! fjall, rusqlite, bare loops and persistent-map 0.1.3, on one machine in
//! one run. Prints a markdown table of the targets of issue 5 and whether
//! each is met.
//!
//! `benchmarks/run.sh` builds everything and runs it.

mod baselines;
mod data;
mod ours;

use std::path::{Path, PathBuf};
use std::process::Command;

use persistent_map_sqlite::Synchronous;
use sqlx::sqlite::SqliteSynchronous;

use data::Run;

struct Scale {
    entries: u64,
    seq_full: u64,
    seq_normal: u64,
    concurrent: u64,
    csv: u64,
    behind: u64,
    legacy_inserts: u64,
}

impl Scale {
    fn from_env() -> Self {
        let entries = std::env::var("COMPARE_ENTRIES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000);
        Self {
            entries,
            seq_full: 2_000,
            seq_normal: 20_000,
            concurrent: 8_000,
            csv: 50_000,
            behind: 200_000,
            legacy_inserts: 500,
        }
    }
}

/// One row of the report: our figure against a reference, and the target.
struct Check {
    what: String,
    ours: String,
    reference: String,
    ratio: f64,
    /// `(relation, bound)`: the ratio must be `>=` or `<=` the bound.
    target: (&'static str, f64),
}

impl Check {
    fn rates(what: &str, ours: Run, reference_name: &str, reference: Run, target: (&'static str, f64)) -> Self {
        Self {
            what: what.to_owned(),
            ours: format!("{:.0}/s", ours.rate()),
            reference: format!("{reference_name}: {:.0}/s", reference.rate()),
            ratio: ours.rate() / reference.rate(),
            target,
        }
    }

    fn met(&self) -> bool {
        match self.target.0 {
            ">=" => self.ratio >= self.target.1,
            _ => self.ratio <= self.target.1,
        }
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// `compare mem <dashmap|ours> <entries> [db]`: resident bytes per entry of
/// one structure, measured in a fresh process.
async fn memory_child(args: &[String]) {
    let entries: u64 = args[3].parse().expect("entries");
    let before = rss_bytes();
    let after = match args[2].as_str() {
        "dashmap" => {
            let map: dashmap::DashMap<String, String> =
                (0..entries).map(|i| (data::key(i), data::value(i))).collect();
            let rss = rss_bytes();
            assert_eq!(map.len() as u64, entries);
            rss
        }
        _ => {
            let map = ours::sqlite_map(Path::new(&args[4]), Synchronous::Normal).await;
            let rss = rss_bytes();
            assert_eq!(map.len() as u64, entries);
            rss
        }
    };
    println!("{}", (after - before) as f64 / entries as f64);
}

fn memory_of(mode: &str, entries: u64, db: &Path) -> f64 {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(["mem", mode, &entries.to_string(), &db.display().to_string()])
        .output()
        .expect("memory child");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("bytes per entry")
}

/// What persistent-map 0.1.3 measured.
#[derive(Clone, Copy)]
struct Legacy {
    inserts: Run,
    reopen: Run,
    gets: Run,
}

fn legacy(dir: &Path, inserts: u64, entries: u64) -> Option<Legacy> {
    let binary = std::env::var("LEGACY_BIN").ok()?;
    let out = Command::new(binary)
        .args([dir.display().to_string(), inserts.to_string(), entries.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |name: &str| -> Option<Run> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let mut parts = line.split_whitespace().skip(1);
        Some(Run {
            ops: parts.next()?.parse().ok()?,
            secs: parts.next()?.parse().ok()?,
        })
    };
    Some(Legacy {
        inserts: find("insert_sequential")?,
        reopen: find("reopen")?,
        gets: find("get_warm")?,
    })
}

/// Whether section `name` runs: all of them, or those listed in
/// `COMPARE_ONLY` (comma-separated: get, behind, seq, concurrent, bulk,
/// reopen, csv, memory).
fn wants(name: &str) -> bool {
    match std::env::var("COMPARE_ONLY") {
        Ok(only) => only.split(',').any(|s| s.trim() == name),
        Err(_) => true,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("mem") {
        memory_child(&args).await;
        return;
    }
    let scale = Scale::from_env();
    let tmp = tempfile::tempdir_in(std::env::var("COMPARE_DIR").unwrap_or_else(|_| ".".into()))
        .expect("temporary directory");
    let dir = tmp.path();
    let file = |name: &str| -> PathBuf { dir.join(name) };
    let mut checks = Vec::new();
    eprintln!("running with {} entries in {}", scale.entries, dir.display());
    // persistent-map 0.1.3, in its own process, on a store of
    // `scale.entries` rows that the reopen section then opens too.
    let legacy = if wants("legacy") || wants("reopen") {
        legacy(dir, scale.legacy_inserts, scale.entries)
    } else {
        None
    };
    if legacy.is_none() {
        eprintln!("persistent-map 0.1.3 not measured: set LEGACY_BIN (benchmarks/run.sh does)");
    }

    let mut gets_ours = None;
    if wants("get") {
        // get on a warm map vs a bare DashMap get + clone.
        let map = ours::sqlite_map(&file("get.db"), Synchronous::Normal).await;
        let warm = 100_000;
        map.extend((0..warm).map(|i| (data::key(i), data::value(i)))).await.expect("fill");
        let bare = baselines::dashmap_gets(warm, 2_000_000);
        let mine = ours::gets(&map, warm, 2_000_000);
        let bare2 = baselines::dashmap_gets(warm, 2_000_000);
        let mine2 = ours::gets(&map, warm, 2_000_000);
        let (bare, mine) = (best(bare, bare2), best(mine, mine2));
        checks.push(Check {
            what: "get, warm map, time per get vs bare DashMap get+clone".into(),
            ours: format!("{:.0} ns", mine.secs / mine.ops as f64 * 1e9),
            reference: format!("DashMap: {:.0} ns", bare.secs / bare.ops as f64 * 1e9),
            ratio: (mine.secs / mine.ops as f64) / (bare.secs / bare.ops as f64),
            target: ("<=", 1.3),
        });
        let idle = ours::gets_with_writers(map.clone(), warm, 0, 2_000_000).await;
        let busy = ours::gets_with_writers(map.clone(), warm, 4, 2_000_000).await;
        checks.push(Check::rates("get throughput with 4 write-through writers vs none", busy, "no writers", idle, (">=", 0.5)));
        map.close().await.expect("close");
        gets_ours = Some(mine);
    }

    if wants("behind") {
        // Write-behind inserts: the caller's cost against a bare DashMap insert.
        for tasks in [1, 4] {
            let n = scale.behind;
            let bare = best(baselines::dashmap_inserts(tasks, n).await, baselines::dashmap_inserts(tasks, n).await);
            let mine = best(
                ours::behind_inserts(&file(&format!("behind-{tasks}-a.db")), tasks, n).await,
                ours::behind_inserts(&file(&format!("behind-{tasks}-b.db")), tasks, n).await,
            );
            checks.push(Check {
                what: format!("write-behind insert, {tasks} task(s), time per insert vs bare DashMap insert"),
                ours: format!("{:.0} ns", mine.secs / mine.ops as f64 * 1e9),
                reference: format!("DashMap: {:.0} ns", bare.secs / bare.ops as f64 * 1e9),
                ratio: mine.secs / bare.secs,
                target: ("<=", 3.0),
            });
        }
    }

    let mut seq = None;
    if wants("seq") || wants("concurrent") {
        // Sequential acknowledged inserts, each against its floor.
        let ours_full = ours::sequential_inserts(&file("seq-full.db"), Synchronous::Full, scale.seq_full).await;
        let fsync = baselines::fdatasync_loop(&file("fdatasync.log"), scale.seq_full);
        checks.push(Check::rates("sequential inserts, SQLite WAL FULL, vs fdatasync-per-record loop", ours_full, "fdatasync loop", fsync, (">=", 0.8)));
        let held_full = baselines::sqlx_held_sequential_inserts(&file("held-full.db"), SqliteSynchronous::Full, scale.seq_full).await;
        checks.push(Check::rates("(info) sequential inserts at FULL vs raw sqlx on one held connection", ours_full, "sqlx held", held_full, (">=", 0.0)));
        let sqlx_full = baselines::sqlx_sequential_inserts(&file("sqlx-full.db"), SqliteSynchronous::Full, scale.seq_full).await;
        checks.push(Check::rates("(info) sequential inserts at FULL vs raw sqlx through a pool", ours_full, "sqlx pool", sqlx_full, (">=", 0.0)));
        let ours_normal = ours::sequential_inserts(&file("seq-normal.db"), Synchronous::Normal, scale.seq_normal).await;
        let held_normal = baselines::sqlx_held_sequential_inserts(&file("held-normal.db"), SqliteSynchronous::Normal, scale.seq_normal).await;
        checks.push(Check::rates("sequential inserts, SQLite default (NORMAL), vs raw sqlx on one held connection", ours_normal, "sqlx held", held_normal, (">=", 0.8)));
        checks.push(Check {
            what: "sequential inserts, SQLite default (NORMAL), absolute".into(),
            ours: format!("{:.0}/s", ours_normal.rate()),
            reference: "10000/s".into(),
            ratio: ours_normal.rate() / 10_000.0,
            target: (">=", 1.0),
        });
        let redb_seq = baselines::redb_sequential_inserts(&file("redb-seq.redb"), scale.seq_full);
        checks.push(Check::rates("(info) sequential durable inserts: SQLite FULL vs redb (fsync per commit)", ours_full, "redb", redb_seq, (">=", 0.0)));
        let sled_seq = baselines::sled_sequential_inserts(&file("sled-seq"), scale.seq_full);
        checks.push(Check::rates("(info) sequential durable inserts: SQLite FULL vs sled (flush per insert: sync_file_range, not fsync)", ours_full, "sled", sled_seq, (">=", 0.0)));
        let fjall_seq = baselines::fjall_sequential_inserts(&file("fjall-seq"), scale.seq_full);
        checks.push(Check::rates("(info) sequential durable inserts: SQLite FULL vs fjall (persist SyncAll per insert)", ours_full, "fjall", fjall_seq, (">=", 0.0)));
        let rusqlite_seq = baselines::rusqlite_sequential_inserts(&file("rusqlite-seq.db"), scale.seq_full);
        checks.push(Check::rates("(info) sequential durable inserts: SQLite FULL vs rusqlite (WAL FULL, held connection)", ours_full, "rusqlite", rusqlite_seq, (">=", 0.0)));
        seq = Some((ours_full, ours_normal));
    }

    if let (true, Some((ours_full, _))) = (wants("concurrent"), seq) {
        // Group commit.
        let concurrent = ours::concurrent_inserts(&file("conc-full.db"), Synchronous::Full, 16, scale.concurrent).await;
        checks.push(Check::rates("16 concurrent inserters at FULL vs 1 sequential at FULL", concurrent, "sequential", ours_full, (">=", 8.0)));
        // The same 16-way durable workload on the peers, one OS thread each.
        let sled_conc = baselines::sled_concurrent_inserts(&file("sled-conc"), 16, scale.concurrent);
        checks.push(Check::rates("(info) 16 concurrent durable inserters: ours (SQLite FULL) vs sled (sync_file_range, not fsync)", concurrent, "sled", sled_conc, (">=", 0.0)));
        let fjall_conc = baselines::fjall_concurrent_inserts(&file("fjall-conc"), 16, scale.concurrent);
        checks.push(Check::rates("(info) 16 concurrent durable inserters: ours (SQLite FULL) vs fjall", concurrent, "fjall", fjall_conc, (">=", 0.0)));
        let redb_conc = baselines::redb_concurrent_inserts(&file("redb-conc.redb"), 16, scale.concurrent);
        checks.push(Check::rates("(info) 16 concurrent durable inserters: ours (SQLite FULL) vs redb", concurrent, "redb", redb_conc, (">=", 0.0)));
        let rusqlite_conc = baselines::rusqlite_concurrent_inserts(&file("rusqlite-conc.db"), 16, scale.concurrent);
        checks.push(Check::rates("(info) 16 concurrent durable inserters: ours (SQLite FULL) vs rusqlite", concurrent, "rusqlite", rusqlite_conc, (">=", 0.0)));
    }

    let mut bulk = None;
    if wants("bulk") {
        let bulk_many = ours::bulk_insert_many(&file("bulk-many.db"), scale.entries).await;
        let bulk_behind = ours::bulk_write_behind(&file("bulk-behind.db"), scale.entries).await;
        let sqlx_bulk = baselines::sqlx_bulk(&file("sqlx-bulk.db"), scale.entries).await;
        let redb_bulk = baselines::redb_bulk(&file("redb-bulk.redb"), scale.entries);
        checks.push(Check::rates("bulk load (insert_many + flush) vs one raw sqlx transaction", bulk_many, "sqlx tx", sqlx_bulk, (">=", 0.7)));
        checks.push(Check::rates("bulk load (write-behind + flush) vs one raw sqlx transaction", bulk_behind, "sqlx tx", sqlx_bulk, (">=", 0.7)));
        checks.push(Check::rates("(info) bulk load (insert_many) vs redb, one transaction", bulk_many, "redb", redb_bulk, (">=", 0.0)));
        bulk = Some(bulk_many);
    }

    if wants("reopen") {
        // Reopen: the store 0.1.3 filled (the same rows for every reader).
        let store = if legacy.is_some() {
            dir.join("legacy-read.db")
        } else {
            let path = file("reopen.db");
            ours::bulk_insert_many(&path, scale.entries).await;
            path
        };
        let scan = best(baselines::sqlx_row_scan(&store).await, baselines::sqlx_row_scan(&store).await);
        let reopen = best(ours::reopen(&store, scale.entries).await, ours::reopen(&store, scale.entries).await);
        checks.push(Check::rates("reopen (load all into the cache) vs raw sqlx scan reading the rows", reopen, "sqlx row scan", scan, (">=", 0.8)));
        let decode = baselines::sqlx_scan(&store).await;
        checks.push(Check::rates("(info) reopen vs raw sqlx scan decoding rows into a DashMap", reopen, "sqlx decode", decode, (">=", 0.0)));
        if let Some(legacy) = legacy {
            checks.push(Check::rates(&format!("reopen vs 0.1.3 reopen, same {} rows", scale.entries), reopen, "0.1.3", legacy.reopen, (">=", 1.5)));
        }
        let redb_path = file("redb-reopen.redb");
        baselines::redb_bulk(&redb_path, scale.entries);
        let redb_scan = baselines::redb_scan(&redb_path);
        checks.push(Check::rates("(info) reopen vs redb scan into a DashMap", reopen, "redb", redb_scan, (">=", 0.0)));
    }

    if wants("csv") {
        let csv_seq = ours::csv_sequential_inserts(&file("seq.csv"), scale.csv).await;
        let append = baselines::append_loop(&file("append.log"), scale.csv);
        checks.push(Check::rates("CSV sequential inserts vs bare one-write-per-record loop", csv_seq, "append loop", append, (">=", 0.2)));
        let csv_flush = ours::csv_flush_per_thousand(&file("flush.csv"), 20).await;
        let one_sync = baselines::one_fdatasync_per_thousand(&file("flush.log"), 20);
        checks.push(Check {
            what: "CSV flush per 1,000 inserts vs one fdatasync".into(),
            ours: format!("{:.2} ms", csv_flush.secs / csv_flush.ops as f64 * 1e3),
            reference: format!("fdatasync: {:.2} ms", one_sync.secs / one_sync.ops as f64 * 1e3),
            ratio: csv_flush.secs / one_sync.secs,
            target: ("<=", 1.25),
        });
    }

    if wants("memory") {
        let db = file("memory.db");
        ours::bulk_insert_many(&db, scale.entries).await;
        let ours_mem = memory_of("ours", scale.entries, &db);
        let bare_mem = memory_of("dashmap", scale.entries, &db);
        checks.push(Check {
            what: format!("resident memory per cached entry, {} entries of ~100 B", scale.entries),
            ours: format!("{ours_mem:.0} B"),
            reference: format!("DashMap<String, String>: {bare_mem:.0} B"),
            ratio: ours_mem / bare_mem,
            target: ("<=", 1.25),
        });
    }

    if let Some(legacy) = legacy {
        if let Some(bulk_many) = bulk {
            checks.push(Check::rates("bulk load (insert_many) vs 0.1.3 inserting one by one", bulk_many, "0.1.3", legacy.inserts, (">=", 200.0)));
        }
        if let Some((_, ours_normal)) = seq {
            checks.push(Check::rates("(info) sequential inserts at default level vs 0.1.3", ours_normal, "0.1.3", legacy.inserts, (">=", 0.0)));
        }
        if let Some(mine) = gets_ours {
            checks.push(Check::rates("(info) get vs 0.1.3 get", mine, "0.1.3", legacy.gets, (">=", 0.0)));
        }
    }

    println!("| workload | persistent-map | reference | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for check in &checks {
        let informational = check.what.starts_with("(info)");
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} |",
            check.what,
            check.ours,
            check.reference,
            check.ratio,
            if informational { "-".to_owned() } else { format!("{} {}x", check.target.0, check.target.1) },
            if informational { "-" } else if check.met() { "yes" } else { "**no**" },
        );
    }
}

fn best(a: Run, b: Run) -> Run {
    if a.secs <= b.secs { a } else { b }
}
