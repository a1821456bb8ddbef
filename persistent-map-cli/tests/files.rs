//! The command against real SQLite and CSV stores.

mod common;

use common::{
    assert_deadlines_in_info, assert_expiring, block_on, file_url, run, run_with_input, set_all,
    write_expiring, AWKWARD, EXPIRING_DUMP, FUTURE,
};
use sqlx::Connection as _;

fn sqlite_exec(path: &std::path::Path, sql: &str) {
    block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
            .await
            .expect("connects");
        sqlx::query(sql).execute(&mut conn).await.expect("runs");
        conn.close().await.expect("closes");
    });
}

#[test]
fn get_set_rm_with_keys_as_json_or_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in [
        file_url("sqlite", dir.path(), "a.db"),
        file_url("csv", dir.path(), "a.csv"),
    ] {
        run(&["set", &store, "alice", r#"{"age": 30}"#]).ok();
        run(&["set", &store, "7", "1"]).ok();
        assert_eq!(run(&["get", &store, "alice"]).ok(), "{\"age\":30}\n");
        assert_eq!(run(&["get", &store, "\"alice\""]).ok(), "{\"age\":30}\n");
        assert_eq!(run(&["get", &store, "7"]).ok(), "1\n");
        let json = run(&["--json", "get", &store, "alice"]).ok();
        assert_eq!(json, "{\"key\":\"alice\",\"value\":{\"age\":30}}\n");

        let missing = run(&["get", &store, "bob"]).code(1);
        assert!(
            missing.stderr.contains("key \"bob\" not found"),
            "{missing:?}"
        );

        assert!(run(&["rm", &store, "alice"])
            .ok()
            .contains("removed \"alice\""));
        run(&["get", &store, "alice"]).code(1);
        let again = run(&["--json", "rm", &store, "alice"]).ok();
        assert!(again.contains("\"removed\":false"), "{again}");

        let bad = run(&["set", &store, "k", "not json"]).code(2);
        assert!(bad.stderr.contains("quote it"), "{bad:?}");
    }
}

#[test]
fn dump_load_dump_is_byte_identical_on_sqlite_and_csv() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = file_url("sqlite", dir.path(), "source.db");
    set_all(&source, AWKWARD);
    let first = dir.path().join("first.jsonl");
    run(&["dump", &source, "--out", first.to_str().expect("utf-8")]).ok();
    let first_text = std::fs::read_to_string(&first).expect("dumped");
    assert_eq!(first_text.lines().count(), AWKWARD.len());
    let mut sorted: Vec<&str> = first_text.lines().collect();
    sorted.sort_by_key(|l| {
        serde_json::from_str::<serde_json::Value>(l).expect("json")["key"]
            .as_str()
            .expect("a string key")
            .to_owned()
    });
    assert_eq!(
        sorted,
        first_text.lines().collect::<Vec<_>>(),
        "sorted by key"
    );

    for (i, target) in [
        file_url("sqlite", dir.path(), "copy.db?table=restored"),
        file_url("csv", dir.path(), "copy.csv"),
    ]
    .iter()
    .enumerate()
    {
        run(&["load", target, first.to_str().expect("utf-8")]).ok();
        let second = dir.path().join(format!("second{i}.jsonl"));
        run(&["dump", target, "--out", second.to_str().expect("utf-8")]).ok();
        assert_eq!(
            std::fs::read(&second).expect("dumped"),
            first_text.as_bytes(),
            "{target}"
        );
        // To stdout, too.
        assert_eq!(run(&["dump", target]).ok(), first_text);
    }

    // The loaded store reads as the application wrote it.
    let copy = file_url("sqlite", dir.path(), "copy.db?table=restored");
    assert_eq!(run(&["get", &copy, "42"]).ok(), "[1,2.5,-3,true,null]\n");
    assert_eq!(run(&["get", &copy, "line\nbreak"]).ok(), "\"a,b\\nc\"\n");
}

#[test]
fn load_refuses_a_bad_line_before_writing_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"key\":\"a\",\"value\":1}\n\n{\"key\":\"b\"}\n").expect("written");
    let store = file_url("sqlite", dir.path(), "a.db");
    let failed = run(&["load", &store, input.to_str().expect("utf-8")]).code(1);
    assert!(failed.stderr.contains("in.jsonl, line 3"), "{failed:?}");
    assert!(!dir.path().join("a.db").exists(), "nothing written");
}

#[test]
fn load_from_stdin_with_replace_keeps_the_store_when_a_line_is_bad() {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in [
        file_url("sqlite", dir.path(), "a.db"),
        file_url("csv", dir.path(), "a.csv"),
    ] {
        set_all(&store, &[("kept", "1"), ("also", "2")]);
        let input = b"{\"key\":\"new\",\"value\":3}\n{\"key\":\"broken\"}\n";
        let failed = run_with_input(&["load", &store, "-", "--replace"], input).code(1);
        assert!(failed.stderr.contains("stdin, line 2"), "{failed:?}");
        assert_eq!(run(&["get", &store, "kept"]).ok(), "1\n", "{store}");
        assert_eq!(run(&["get", &store, "also"]).ok(), "2\n", "{store}");
        run(&["get", &store, "new"]).code(1);

        let good = b"{\"key\":\"new\",\"value\":3}\n\n{\"key\":\"other\",\"value\":4}\n";
        let loaded = run_with_input(&["load", &store, "-", "--replace"], good).ok();
        assert!(loaded.contains("loaded 2 entries"), "{loaded}");
        run(&["get", &store, "kept"]).code(1);
        assert_eq!(run(&["get", &store, "other"]).ok(), "4\n", "{store}");
    }
}

#[test]
fn verify_reports_bad_sqlite_rows_with_their_location_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    let store = file_url("sqlite", dir.path(), "app.db");
    set_all(&store, &[("good", "1")]);
    assert!(run(&["verify", &store]).ok().contains("ok:"));

    sqlite_exec(
        &path,
        "INSERT INTO kv (key, value) VALUES ('broken', 'not json {')",
    );
    sqlite_exec(&path, "INSERT INTO kv (key, value) VALUES (x'00ff', '1')");
    let before = std::fs::read(&path).expect("readable");

    let report = run(&["verify", &store]).code(1);
    assert!(
        report.stdout.contains("key \"broken\"") && report.stdout.contains("not JSON"),
        "{report:?}"
    );
    assert!(report.stdout.contains("the key is blob"), "{report:?}");
    assert!(report.stderr.contains("2 problem(s)"), "{report:?}");

    let json = run(&["--json", "verify", &store]).code(1);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(parsed["ok"], false);
    assert_eq!(parsed["problems"].as_array().map(Vec::len), Some(2));
    assert!(parsed["problems"][0]["location"]
        .as_str()
        .is_some_and(|l| l.contains("rowid")));

    assert_eq!(std::fs::read(&path).expect("readable"), before, "unchanged");
    // Other commands name the bad row instead of skipping it.
    let dump = run(&["dump", &store]).code(1);
    assert!(dump.stderr.contains("key \"broken\""), "{dump:?}");
}

#[test]
fn verify_checks_sqlite_integrity_and_refuses_other_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("not.db");
    std::fs::write(&path, b"this is not a database, just text long enough").expect("written");
    let failed = run(&["verify", &file_url("sqlite", dir.path(), "not.db")]).code(1);
    assert!(failed.all().contains("not a database"), "{failed:?}");
    let missing = run(&["verify", &file_url("sqlite", dir.path(), "none.db")]).code(1);
    assert!(missing.stderr.contains("does not exist"), "{missing:?}");
    assert!(
        !dir.path().join("none.db").exists(),
        "read commands create nothing"
    );
}

const BAD_CSV: &str = "persistent-map-csv/2,key,value\n\
put,alice,30\n\
put,bob,not json\n\
upsert,carol,1\n\
put,dave\n\
put,erin,5\n\
put,torn,\"{\"\"x";

#[test]
fn verify_reports_bad_csv_records_with_their_line_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, BAD_CSV).expect("written");
    let store = file_url("csv", dir.path(), "bad.csv");

    let report = run(&["verify", &store]).code(1);
    let out = &report.stdout;
    assert!(
        out.contains("line 3, key \"bob\": the value is not JSON"),
        "{out}"
    );
    assert!(out.contains("line 4: unknown op \"upsert\""), "{out}");
    assert!(out.contains("line 5: expected 3 fields, found 2"), "{out}");
    assert!(
        out.contains("note: line 7: an incompletely written last record"),
        "{out}"
    );
    assert!(
        !out.contains("erin"),
        "good records are not reported: {out}"
    );
    assert!(report.stderr.contains("3 problem(s)"), "{report:?}");

    assert_eq!(std::fs::read_to_string(&path).expect("readable"), BAD_CSV);
    assert!(!dir.path().join("bad.csv.lock").exists(), "no lock taken");

    let dump = run(&["dump", &store]).code(1);
    assert!(dump.stderr.contains("line 3, key \"bob\""), "{dump:?}");

    let header = dir.path().join("header.csv");
    std::fs::write(&header, "persistent-map-csv/9,key,value\n").expect("written");
    let newer = run(&["verify", &file_url("csv", dir.path(), "header.csv")]).code(1);
    assert!(
        newer.stdout.contains("line 1: format version 9"),
        "{newer:?}"
    );
}

#[test]
fn a_torn_tail_is_a_note_not_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("torn.csv");
    let text = "persistent-map-csv/2,key,value\nput,a,1\nbatch,,2\nput,b,2\n";
    std::fs::write(&path, text).expect("written");
    let report = run(&["verify", &file_url("csv", dir.path(), "torn.csv")]).ok();
    assert!(
        report.contains("line 3: an incomplete last batch"),
        "{report}"
    );
    let info = run(&["info", &file_url("csv", dir.path(), "torn.csv")]).ok();
    assert!(info.contains("entries:        1"), "{info}");
    assert!(info.contains("torn tail:      from line 3"), "{info}");
    assert_eq!(std::fs::read_to_string(&path).expect("readable"), text);
}

#[test]
fn files_of_persistent_map_0_1_are_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("old.csv"),
        "alice,30\nbob,25\nalice,31\ncarol,1,Ada,true\n",
    )
    .expect("written");
    let store = file_url("csv", dir.path(), "old.csv");
    assert_eq!(
        run(&["dump", &store]).ok(),
        "{\"key\":\"alice\",\"value\":31}\n{\"key\":\"bob\",\"value\":25}\n\
         {\"key\":\"carol\",\"value\":[1,\"Ada\",true]}\n"
    );
    let info = run(&["info", &store]).ok();
    assert!(
        info.contains("format version: 1 (persistent-map 0.1.x"),
        "{info}"
    );
}

#[test]
fn copy_refuses_a_non_empty_target_unless_replacing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let from = file_url("sqlite", dir.path(), "from.db");
    let to = file_url("csv", dir.path(), "to.csv");
    set_all(&from, AWKWARD);
    set_all(&to, &[("existing", "1")]);

    let refused = run(&["copy", &from, &to]).code(1);
    assert!(
        refused
            .stderr
            .contains("is not empty (1 entries); use --replace"),
        "{refused:?}"
    );
    assert_eq!(
        run(&["get", &to, "existing"]).ok(),
        "1\n",
        "target untouched"
    );
    run(&["get", &to, "alice"]).code(1);

    let copied = run(&[
        "--json",
        "copy",
        &from,
        &to,
        "--replace",
        "--batch-size",
        "2",
    ])
    .ok();
    let parsed: serde_json::Value = serde_json::from_str(&copied).expect("json");
    assert_eq!(parsed["entries"], AWKWARD.len());
    assert_eq!(parsed["verified"], true);
    run(&["get", &to, "existing"]).code(1);
    assert_eq!(run(&["dump", &from]).ok(), run(&["dump", &to]).ok());

    run(&["copy", &from, &from]).code(2);
    // The same file spelled another way is the same store: refused, and
    // --replace must not empty the source.
    let respelled = format!("sqlite:{}", dir.path().join(".").join("from.db").display());
    run(&["copy", &from, &respelled, "--replace"]).code(2);
    assert_eq!(
        run(&["get", &from, "alice"]).code,
        0,
        "the source is intact"
    );
}

#[test]
fn export_neutralises_formula_like_cells() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = file_url("sqlite", dir.path(), "a.db");
    set_all(
        &store,
        &[
            ("=1+1", "\"@SUM(A1:A9)\""),
            ("+cmd", "-5"),
            ("-x", "\"+33 1 23\""),
            ("@at", "{\"a\": \"=b\"}"),
            ("plain", "\"text, with comma\""),
        ],
    );
    let csv = dir.path().join("out.csv");
    run(&["export", &store, "--csv", csv.to_str().expect("utf-8")]).ok();
    assert_eq!(
        std::fs::read_to_string(&csv).expect("exported"),
        "key,value\n'+cmd,'-5\n'-x,'+33 1 23\n'=1+1,'@SUM(A1:A9)\n@at,\"{\"\"a\"\":\"\"=b\"\"}\"\nplain,\"text, with comma\"\n"
            .replace("\n@at", "\n'@at")
    );
}

#[test]
fn info_shows_format_count_size_shape_and_csv_ratio() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = file_url("csv", dir.path(), "a.csv");
    for i in 0..4 {
        run(&["set", &store, "counter", &i.to_string()]).ok();
    }
    set_all(&store, &[("user", r#"{"name": "x", "age": 1}"#)]);
    let info = run(&["info", &store]).ok();
    for expected in [
        "backend:        csv",
        "format version: 5",
        "entries:        2",
        "records:        5 (2 live, 3 dead: 40% live)",
        "last rewrite:",
        "keys:           string 2",
        "values:         number 1, object 1; fields: age (number 1), name (string 1)",
    ] {
        assert!(info.contains(expected), "{expected:?} in {info}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&run(&["--json", "info", &store]).ok()).expect("json");
    assert_eq!(json["entries"], 2);
    assert_eq!(json["csv"]["dead"], 3);
    assert_eq!(json["values"]["types"]["object"], 1);

    let compacted = run(&["compact", &store]).ok();
    assert!(compacted.contains("compacted"), "{compacted}");
    let after = run(&["info", &store]).ok();
    assert!(
        after.contains("records:        2 (2 live, 0 dead: 100% live)"),
        "{after}"
    );

    let sqlite = file_url("sqlite", dir.path(), "a.db");
    set_all(&sqlite, &[("k", "1")]);
    let info = run(&["info", &sqlite]).ok();
    assert!(
        info.contains("format version: 4") && info.contains("database file"),
        "{info}"
    );
    let refused = run(&["compact", &sqlite]).code(1);
    assert!(refused.stderr.contains("only CSV"), "{refused:?}");
}

#[test]
fn usage_errors_exit_with_2_and_help_has_examples() {
    run(&["info", "nothing-like-a-url"]).code(2);
    run(&["info"]).code(2);
    run(&["info", "sqlite:a.db?tabel=x"]).code(2);
    let help = run(&["--help"]).ok();
    assert!(
        help.contains("Examples:") && help.contains("copy sqlite:app.db"),
        "{help}"
    );
    let help = run(&["dump", "--help"]).ok();
    assert!(help.contains("constant memory"), "{help}");
}

#[test]
fn watch_is_for_shared_stores_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = run(&["watch", &file_url("sqlite", dir.path(), "a.db")]).code(1);
    assert!(refused.stderr.contains("only shared stores"), "{refused:?}");
}

#[test]
fn keys_whose_text_is_json_stay_distinct_keys_on_a_new_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in [
        file_url("sqlite", dir.path(), "k.db"),
        file_url("csv", dir.path(), "k.csv"),
    ] {
        // The number 42, the text "42", null and the text "null": four keys.
        run(&["set", &store, "42", "1"]).ok();
        run(&["set", &store, r#""42""#, "2"]).ok();
        run(&["set", &store, "null", "3"]).ok();
        run(&["set", &store, r#""null""#, "4"]).ok();
        assert_eq!(run(&["get", &store, "42"]).ok(), "1\n", "{store}");
        assert_eq!(run(&["get", &store, r#""42""#]).ok(), "2\n", "{store}");
        assert_eq!(run(&["get", &store, "null"]).ok(), "3\n", "{store}");
        assert_eq!(run(&["get", &store, r#""null""#]).ok(), "4\n", "{store}");
        let json = run(&["--json", "get", &store, r#""42""#]).ok();
        assert_eq!(json, "{\"key\":\"\\\"42\\\"\",\"value\":2}\n");

        // A dump and a load into a new store keep the four keys apart, and
        // so does a copy.
        let dump = run(&["dump", &store]).ok();
        let copy = format!("{store}-copy");
        let copy = copy
            .replace(".db-copy", "-copy.db")
            .replace(".csv-copy", "-copy.csv");
        run(&["copy", &store, &copy]).ok();
        assert_eq!(run(&["dump", &copy]).ok(), dump, "{copy}");
        let file = dir.path().join("dump.jsonl");
        std::fs::write(&file, &dump).expect("write dump");
        let loaded = copy.replace("-copy", "-loaded");
        run(&["load", &loaded, file.to_str().expect("utf-8 path")]).ok();
        assert_eq!(run(&["dump", &loaded]).ok(), dump, "{loaded}");
        assert_eq!(run(&["get", &loaded, r#""null""#]).ok(), "4\n");
    }
}

#[test]
fn copy_keeps_a_legacy_sources_key_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let legacy = dir.path().join("legacy.csv");
    std::fs::write(
        &legacy,
        "persistent-map-csv/2,key,value\nput,42,1\nput,alice,2\n",
    )
    .expect("write");
    let source = file_url("csv", dir.path(), "legacy.csv");
    let target = file_url("sqlite", dir.path(), "copy.db");
    run(&["copy", &source, &target]).ok();
    assert_eq!(run(&["dump", &target]).ok(), run(&["dump", &source]).ok());
    // Stored as 0.2.0 stored it: a string key that looks like JSON unquoted.
    assert_eq!(run(&["get", &target, r#""42""#]).ok(), "1\n");
    let info = run(&["--json", "info", &target]).ok();
    assert!(info.contains("\"format_version\":\"1\""), "{info}");

    // Into an existing store of the other format, the texts would mean
    // other keys: refused.
    let new = file_url("csv", dir.path(), "new.csv");
    run(&["set", &new, "x", "1"]).ok();
    run(&["rm", &new, "x"]).ok();
    let refused = run(&["copy", &source, &new]).code(2);
    assert!(refused.stderr.contains("key format"), "{refused:?}");
}

#[test]
fn deadlines_travel_through_dump_load_and_copy_on_sqlite_and_csv() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("app.db");
    block_on(async {
        let backend = persistent_map_sqlite::SqliteBackend::builder(&db)
            .build()
            .await
            .expect("opens");
        write_expiring(&backend).await;
        backend.close().await;
    });
    let sqlite = file_url("sqlite", dir.path(), "app.db");
    assert_eq!(run(&["dump", &sqlite]).ok(), EXPIRING_DUMP);
    assert_deadlines_in_info(&sqlite);
    assert!(run(&["verify", &sqlite]).ok().contains("ok:"));
    // get prints the value as before; --json adds the deadline when set.
    assert_eq!(run(&["get", &sqlite, "later"]).ok(), "1\n");
    assert_eq!(
        run(&["--json", "get", &sqlite, "later"]).ok(),
        format!("{{\"expires_at\":{FUTURE},\"key\":\"later\",\"value\":1}}\n")
    );
    assert_eq!(
        run(&["--json", "get", &sqlite, "plain"]).ok(),
        "{\"key\":\"plain\",\"value\":{\"a\":1}}\n"
    );

    // load keeps the deadlines: read back through the backend.
    let dump = dir.path().join("dump.jsonl");
    std::fs::write(&dump, EXPIRING_DUMP).expect("written");
    let csv = file_url("csv", dir.path(), "loaded.csv");
    run(&["load", &csv, dump.to_str().expect("utf-8")]).ok();
    block_on(async {
        let backend =
            persistent_map_csv::CsvBackend::builder(dir.path().join("loaded.csv")).build();
        assert_expiring(&backend).await;
    });
    assert_eq!(run(&["dump", &csv]).ok(), EXPIRING_DUMP);
    assert_deadlines_in_info(&csv);
    assert!(run(&["verify", &csv]).ok().contains("ok:"));

    // copy keeps them too, and verifies them in its checksum.
    let copy = file_url("sqlite", dir.path(), "copy.db?table=copied");
    let copied = run(&["--json", "copy", &csv, &copy]).ok();
    let copied: serde_json::Value = serde_json::from_str(&copied).expect("json");
    assert_eq!(copied["verified"], true);
    assert_eq!(copied["entries"], 4);
    block_on(async {
        let backend = persistent_map_sqlite::SqliteBackend::builder(dir.path().join("copy.db"))
            .table("copied")
            .build()
            .await
            .expect("opens");
        assert_expiring(&backend).await;
        backend.close().await;
    });
    assert_eq!(run(&["dump", &copy]).ok(), EXPIRING_DUMP);
    let back = file_url("csv", dir.path(), "back.csv");
    run(&["copy", &copy, &back]).ok();
    assert_eq!(run(&["dump", &back]).ok(), EXPIRING_DUMP);
}

#[test]
fn verify_reports_undecodable_deadlines_with_their_location() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "persistent-map-csv/5,key,value,expires_at\nput,a,1,\nput,k,2,soon\n";
    std::fs::write(dir.path().join("bad.csv"), text).expect("written");
    let csv = file_url("csv", dir.path(), "bad.csv");
    let report = run(&["verify", &csv]).code(1);
    assert!(
        report.stdout.contains(
            "line 3, key \"k\": the deadline \"soon\" is not an integer number of milliseconds"
        ),
        "{report:?}"
    );
    let dump = run(&["dump", &csv]).code(1);
    assert!(dump.stderr.contains("line 3, key \"k\""), "{dump:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bad.csv")).expect("readable"),
        text
    );

    let db = dir.path().join("bad.db");
    block_on(async {
        let backend = persistent_map_sqlite::SqliteBackend::builder(&db)
            .build()
            .await
            .expect("opens");
        write_expiring(&backend).await;
        backend.close().await;
    });
    sqlite_exec(&db, "UPDATE kv SET expires_at = 'soon' WHERE key = 'later'");
    let sqlite = file_url("sqlite", dir.path(), "bad.db");
    let report = run(&["verify", &sqlite]).code(1);
    assert!(
        report.stdout.contains(
            "key \"later\": the deadline (expires_at) is not an integer number of milliseconds (it is text)"
        ),
        "{report:?}"
    );
    assert!(report.stderr.contains("1 problem(s)"), "{report:?}");
    let dump = run(&["dump", &sqlite]).code(1);
    assert!(
        dump.stderr.contains("key \"later\"") && dump.stderr.contains("expires_at"),
        "{dump:?}"
    );
}

#[test]
fn load_refuses_an_undecodable_deadline_before_writing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"key\":\"a\",\"value\":1}\n{\"key\":\"b\",\"value\":2,\"expires_at\":\"soon\"}\n",
    )
    .expect("written");
    let store = file_url("sqlite", dir.path(), "a.db");
    let refused = run(&["load", &store, input.to_str().expect("utf-8")]).code(1);
    assert!(
        refused.stderr.contains("line 2") && refused.stderr.contains("expires_at"),
        "{refused:?}"
    );
    assert!(
        !dir.path().join("a.db").exists(),
        "refused before the store is opened"
    );
}

#[test]
fn legacy_key_stores_with_deadlines_copy_between_sqlite_and_csv() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("legacy.db");
    block_on(async {
        let backend = persistent_map_sqlite::SqliteBackend::builder(&db)
            .new_store_key_format(persistent_map_core::codec::KeyFormat::Legacy)
            .build()
            .await
            .expect("opens");
        write_expiring(&backend).await;
        backend.close().await;
    });
    let sqlite = file_url("sqlite", dir.path(), "legacy.db");
    assert!(run(&["info", &sqlite]).ok().contains("format version: 3"));
    assert_eq!(run(&["dump", &sqlite]).ok(), EXPIRING_DUMP);

    // The copy is created in the legacy key format and gets the deadline
    // field with its first deadline: CSV version 4.
    let csv = file_url("csv", dir.path(), "legacy.csv");
    run(&["copy", &sqlite, &csv]).ok();
    let info = run(&["info", &csv]).ok();
    assert!(info.contains("format version: 4"), "{info}");
    assert_eq!(run(&["dump", &csv]).ok(), EXPIRING_DUMP);
    assert!(run(&["verify", &csv]).ok().contains("ok:"));
    assert_deadlines_in_info(&csv);
}
