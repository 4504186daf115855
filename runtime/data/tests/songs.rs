//! The `songs` data set (character-level text): split rules, windows, vocabulary,
//! arguments and errors on small texts; counts on the real corpus in
//! ../shared/data/irish-folk-abc (skipped, with a printed reason, when it is missing).

mod common;

use common::{TempDir, assert_err, gzip, s};
use dlc_data::{
    DataError, Scaling, Split, Task, load, load_with_args, load_with_scaling, resolve_args,
    songs_vocabulary,
};

/// Six tunes: 0..5. A whitespace-only line and a run of blank lines separate some; the
/// blank line inside "  " puts a space in the vocabulary but in no split.
const SMALL: &str = "X:0\nab\n\nX:1\ncd\n  \n\nX:2\nef\n\nX:3\ngh\n\nX:4\nij\n\n\n\nX:5\nkl\n";

fn args(seq: usize) -> Vec<(String, String)> {
    vec![("seq".to_string(), seq.to_string())]
}

/// The text of every window of a split: (x, y) pairs.
fn decode(split: &Split, vocab: &[char], seq: usize) -> Vec<(String, String)> {
    let text = |ids: &[f32]| -> String {
        ids.iter()
            .map(|&i| {
                assert_eq!(i.fract(), 0.0, "ids are whole numbers");
                vocab[i as usize]
            })
            .collect()
    };
    (0..split.n)
        .map(|i| {
            (
                text(&split.x[i * seq..(i + 1) * seq]),
                text(&split.y[i * seq..(i + 1) * seq]),
            )
        })
        .collect()
}

/// All of a split's windows put back together: x of each window, then the last y char.
fn covered(windows: &[(String, String)]) -> String {
    let mut out: String = windows.iter().map(|(x, _)| x.as_str()).collect();
    if let Some((_, y)) = windows.last() {
        out.push(y.chars().last().unwrap());
    }
    out
}

#[test]
fn small_text_splits_windows_and_vocabulary() -> Result<(), DataError> {
    let dir = TempDir::new("songs");
    let file = dir.write("tunes.abc", SMALL.as_bytes());
    let seq = 2;
    let d = load_with_args("songs", Some(&file), false, None, &args(seq))?;
    let vocab = d.vocab.clone().expect("text has a vocabulary");
    let expected: Vec<char> = "\n 012345:Xabcdefghijkl".chars().collect();
    assert_eq!(
        vocab, expected,
        "sorted distinct characters of the whole file"
    );
    assert_eq!(
        d.task,
        Task::Classification {
            classes: expected.len()
        }
    );
    assert_eq!((d.x_shape.clone(), d.y_shape.clone()), (vec![2], vec![2]));
    assert!(d.val.is_none() && d.scaling.is_none());
    assert_eq!(d.name, "songs");

    // Tunes 0, 1, 2, 3, 5 train; tune 4 test; joined with one blank line.
    let train_text = "X:0\nab\n\nX:1\ncd\n\nX:2\nef\n\nX:3\ngh\n\nX:5\nkl";
    let train = decode(&d.train, &vocab, seq);
    assert_eq!(train.len(), (train_text.chars().count() - 1) / seq);
    assert_eq!(covered(&train), train_text[..train.len() * seq + 1]);
    assert_eq!(train[0], ("X:".to_string(), ":0".to_string()));
    assert_eq!(train[1], ("0\n".to_string(), "\na".to_string()));
    // "X:4\nij": 6 characters make two windows of 3; the last `j` only serves as a y.
    let test = decode(&d.test, &vocab, seq);
    assert_eq!(
        test,
        vec![
            ("X:".to_string(), ":4".to_string()),
            ("4\n".to_string(), "\ni".to_string())
        ]
    );
    assert_eq!(d.test.x.len(), 2 * seq);
    assert_eq!(d.test.y.len(), 2 * seq);
    assert_eq!(d.train.example_len(), seq);

    // With validation, tune 3 moves to the validation split.
    let v = load_with_args("songs", Some(&file), true, None, &args(seq))?;
    let val = decode(v.val.as_ref().expect("validation asked for"), &vocab, seq);
    // "X:3\ngh": two windows cover its first 5 characters; the final `h` is dropped.
    assert_eq!(covered(&val), "X:3\ng");
    assert_eq!(val.len(), 2);
    let train_v = decode(&v.train, &vocab, seq);
    let train_v_text = "X:0\nab\n\nX:1\ncd\n\nX:2\nef\n\nX:5\nkl";
    assert_eq!(train_v.len(), (train_v_text.chars().count() - 1) / seq);
    assert_eq!(covered(&train_v), train_v_text[..train_v.len() * seq + 1]);
    assert_eq!(v.test, d.test);

    // The sizes a model takes from the data.
    for (key, value) in [
        ("vocab", expected.len()),
        ("classes", expected.len()),
        ("outputs", expected.len()),
        ("seq", seq),
    ] {
        assert_eq!(d.dim(key), Some(value), "{key}");
    }
    // A window as long as the whole test tune but one: one example.
    let long = load_with_args("songs", Some(&file), false, None, &args(5))?;
    assert_eq!(long.test.n, 1);
    assert_eq!(decode(&long.test, &vocab, 5)[0].1, ":4\nij");
    assert_eq!(songs_vocabulary(&file)?, vocab);
    Ok(())
}

#[test]
fn default_seq_positional_argument_gzip_and_non_ascii() -> Result<(), DataError> {
    let dir = TempDir::new("songs-args");
    // Five tunes with characters beyond ASCII; 120+ characters each so seq 100 fits.
    let tune = |i: usize| format!("X:{i}\nT:Ré — ♪\n{}", "abcdefghij|".repeat(12));
    let text: String = (0..5).map(tune).collect::<Vec<_>>().join("\n\n");
    let file = dir.write("tunes.txt", text.as_bytes());
    let d = load("songs", Some(&file), false)?;
    assert_eq!(d.x_shape, vec![100], "seq defaults to 100");
    let vocab = d.vocab.clone().unwrap();
    for c in ['é', '—', '♪'] {
        assert!(vocab.contains(&c), "{c} in the vocabulary");
    }
    let test_text = tune(4);
    let test = decode(&d.test, &vocab, 100);
    assert_eq!(test.len(), (test_text.chars().count() - 1) / 100);
    assert!(test_text.starts_with(&test[0].0));

    let positional = vec![(String::new(), "7".to_string())];
    assert_eq!(
        load_with_args("songs", Some(&file), false, None, &positional)?.x_shape,
        vec![7]
    );
    // The last value given for a name wins.
    let twice = vec![
        ("seq".to_string(), "9".to_string()),
        ("seq".to_string(), "3".to_string()),
    ];
    assert_eq!(resolve_args("songs", &twice)?, args(3));

    let gz = dir.write("tunes.txt.gz", &gzip(text.as_bytes()));
    assert_eq!(load("songs", Some(&gz), false)?.train, d.train);
    Ok(())
}

#[test]
fn errors_name_the_file() {
    let dir = TempDir::new("songs-errors");
    // Not UTF-8: the byte offset of the first bad byte.
    let bad = dir.write("bad.abc", b"X:1\nab\xff\n");
    assert_err(
        load("songs", Some(&bad), false),
        &[&s(&bad), "not UTF-8", "offset 6"],
    );
    let empty = dir.write("empty.abc", b"");
    assert_err(
        load("songs", Some(&empty), false),
        &[&s(&empty), "empty file"],
    );
    assert_err(songs_vocabulary(&empty), &[&s(&empty), "empty file"]);
    let blank = dir.write("blank.abc", b"\n  \n\t\n");
    assert_err(load("songs", Some(&blank), false), &[&s(&blank), "no tune"]);
    // Four tunes: no test tune, so no test window.
    let four = dir.write("four.abc", b"aaaa\n\nbbbb\n\ncccc\n\ndddd\n");
    assert_err(
        load_with_args("songs", Some(&four), false, None, &args(2)),
        &[&s(&four), "test split", "0 of the file's 4 tunes"],
    );
    // Windows longer than a split.
    let small = dir.write("small.abc", SMALL.as_bytes());
    assert_err(
        load_with_args("songs", Some(&small), false, None, &args(6)),
        &[&s(&small), "test split", "seq + 1 = 7"],
    );
    assert_err(
        load("songs", Some(&dir.join("missing.abc")), false),
        &["missing.abc", "not found"],
    );
    assert_err(load("songs", None, false), &["songs", "no embedded copy"]);
    let scaling = Scaling {
        mean: vec![0.0],
        std: vec![1.0],
    };
    assert_err(
        load_with_scaling("songs", Some(&small), false, Some(&scaling)),
        &[&s(&small), "standardisation"],
    );
}

#[test]
fn arguments_are_checked() {
    let one = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    assert_err(
        resolve_args("songs", &one("window", "3")),
        &["data set `songs`", "no argument `window`", "seq"],
    );
    for bad in ["0", "-1", "2.5", "abc", "1048577"] {
        assert_err(
            resolve_args("songs", &one("seq", bad)),
            &["seq must be a whole number", bad],
        );
    }
    assert_err(
        resolve_args("digits", &one("seq", "3")),
        &["data set `digits` takes no arguments", "`seq`"],
    );
    let two = vec![
        (String::new(), "3".to_string()),
        (String::new(), "4".to_string()),
    ];
    assert_err(resolve_args("songs", &two), &["positional argument 4"]);
    assert_eq!(resolve_args("breast_cancer", &[]).unwrap(), vec![]);
    assert_eq!(
        resolve_args("mnist", &[]).unwrap(),
        vec![
            ("limit".to_string(), "0".to_string()),
            ("labels".to_string(), "true".to_string())
        ]
    );
    assert_eq!(resolve_args("songs", &[]).unwrap(), args(100));
    // Through load: a bad argument fails before the file is read.
    assert_err(
        load_with_args("digits", None, false, None, &one("seq", "3")),
        &["takes no arguments"],
    );
}

/// The Irish folk tunes of MIT 6.S191 lab 1: 83 characters, 806 blank-line separated
/// tunes (804 `X:` headers: two tunes have a blank line inside). The example counts were
/// computed independently (Python: split at blank lines, i % 5, join with "\n\n",
/// (len - 1) // seq).
#[test]
fn irish_folk_corpus() -> Result<(), DataError> {
    let Some(dir) = common::shared("irish-folk-abc") else {
        return Ok(());
    };
    let file = dir.join("irish.abc");
    let text = std::fs::read_to_string(&file).expect("the corpus is UTF-8");
    let tunes = text.split("\n\n").filter(|p| !p.trim().is_empty()).count();
    assert_eq!(tunes, 806);
    assert_eq!(text.lines().filter(|l| l.starts_with("X:")).count(), 804);

    let d = load("songs", Some(&file), false)?;
    let vocab = d.vocab.clone().unwrap();
    assert_eq!(vocab.len(), 83);
    assert_eq!(d.task, Task::Classification { classes: 83 });
    assert_eq!((vocab[0], vocab[1], vocab[82]), ('\n', ' ', '|'));
    assert_eq!((d.train.n, d.test.n), (1566, 409));
    let train = decode(&d.train, &vocab, 100);
    assert!(train[0].0.starts_with("X:1\nT:Alexander's\n"));
    assert_eq!(train[0].1[..99], train[0].0[1..]);
    let test = decode(&d.test, &vocab, 100);
    assert!(
        test[0].0.starts_with("X:5\nT:Bobby Casey's\n"),
        "tune 4 is the first test tune"
    );

    let v = load("songs", Some(&file), true)?;
    let val = v.val.as_ref().unwrap();
    assert_eq!((v.train.n, val.n, v.test.n), (1179, 386, 409));
    assert!(
        decode(val, &vocab, 100)[0]
            .0
            .starts_with("X:4\nT:Blackbird\n")
    );

    let d200 = load_with_args("songs", Some(&file), true, None, &args(200))?;
    let val200 = d200.val.as_ref().unwrap();
    assert_eq!((d200.train.n, val200.n, d200.test.n), (589, 193, 204));
    assert_eq!(d200.dim("seq"), Some(200));
    Ok(())
}
