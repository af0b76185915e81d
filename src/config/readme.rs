//! The README cannot drift from the code: its configuration table lists exactly the environment
//! variables of `sagad serve`, each with the default the code states, and its layout lists exactly
//! the files and folders of `src/` two levels down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};

use super::ServeArgs;

/// Variables in the table that clap does not read.
const NOT_FLAGS: [&str; 1] = ["RUST_LOG"];

/// Every environment variable of `sagad serve` (its own flags and the global ones) and its
/// default, as clap knows them.
fn definitions() -> BTreeMap<String, Option<String>> {
    let serve = ServeArgs::augment_args(clap::Command::new("serve"));
    let cli = crate::cli::Cli::command();
    let global = cli.get_arguments().filter(|a| a.is_global_set());
    serve
        .get_arguments()
        .chain(global)
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            Some((env, (!defaults.is_empty()).then(|| defaults.join(","))))
        })
        .collect()
}

/// The rows of the README's configuration table: variable → its default cell.
fn readme_rows() -> BTreeMap<String, String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name), Some(default)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let name = name.trim_matches('`').to_owned();
        assert!(
            rows.insert(name.clone(), (*default).to_owned()).is_none(),
            "{name} is in the README's configuration table twice"
        );
    }
    rows
}

#[test]
fn the_readme_table_lists_every_variable_with_its_default() {
    let code = definitions();
    let readme = readme_rows();
    assert!(code.len() > 20, "found only {code:?}");
    let mut problems = Vec::new();
    for name in code.keys() {
        if !readme.contains_key(name) {
            problems.push(format!("{name} is not in the README's configuration table"));
        }
    }
    for (name, cell) in &readme {
        if NOT_FLAGS.contains(&name.as_str()) {
            continue;
        }
        match code.get(name) {
            None => problems.push(format!(
                "the README lists {name}, which sagad serve does not read"
            )),
            Some(Some(default)) if !cell.starts_with(&format!("`{default}`")) => problems.push(
                format!("{name}: the README's default is {cell:?}, the code's `{default}`"),
            ),
            Some(None) if cell.starts_with('`') => problems.push(format!(
                "{name}: the README gives {cell:?} as its default, the code has none"
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every entry of `src/` two levels down, as `find src -maxdepth 2` lists them, folders with a
/// trailing slash.
fn source_tree() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut entries = BTreeSet::from(["src/".to_owned()]);
    let mut folders = vec![(PathBuf::from("src"), 1)];
    while let Some((folder, depth)) = folders.pop() {
        for entry in std::fs::read_dir(root.join(&folder)).unwrap() {
            let entry = entry.unwrap();
            let path = folder.join(entry.file_name());
            let name = path.to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                entries.insert(name + "/");
                if depth < 2 {
                    folders.push((path, depth + 1));
                }
            } else {
                entries.insert(name);
            }
        }
    }
    entries
}

/// The entries of `src/` the README's layout (in its Development section) lists.
fn readme_layout() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Development")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_default();
    section
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("src/"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_layout_lists_every_file_and_folder_of_src() {
    let tree = source_tree();
    assert!(tree.len() > 100, "found only {tree:?}");
    let listed = readme_layout();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in &listed {
        if !seen.insert(entry.as_str()) {
            problems.push(format!("the README's layout lists {entry} twice"));
        }
        if !tree.contains(entry) {
            problems.push(format!(
                "the README's layout lists {entry}, which is not in the tree"
            ));
        }
    }
    for entry in &tree {
        if !seen.contains(entry.as_str()) {
            problems.push(format!("{entry} is not in the README's layout"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
