//! The README's configuration table and the flag definitions cannot drift apart: the table lists
//! exactly the environment variables of `sagad serve`, each with the default the code states.

use std::collections::BTreeMap;

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
