//! Tables that fit the terminal: the width is `COLUMNS` when set, else the terminal's (no limit
//! when the output is not a terminal); a cell wraps inside its column when the row would not fit,
//! and long texts that would crowd a table are printed below it, wrapped to the same width.

use comfy_table::{ContentArrangement, LineStyle, Table, TableStyle};

/// A rule under the header and between rows; columns apart by their padding alone (no junctions,
/// so no blank border column between them).
const STYLE: TableStyle =
    TableStyle::new().header_separator(LineStyle::none().fill('═')).row_separator(LineStyle::none().fill('─'));

/// The width output must fit: `COLUMNS`, else the terminal's, else `None` (a pipe or a file).
pub(crate) fn width() -> Option<u16> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<u16>().ok()).filter(|c| *c > 0) {
        return Some(columns);
    }
    Table::new().width()
}

/// A table with `header`, arranged to fit [`width`].
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(STYLE);
    t.set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(w) = width() {
        t.set_width(w);
    }
    t.set_header(header.to_vec());
    t
}

/// Prints `t` as a table when its rows fit [`width`] unwrapped, else each row as a record: one
/// `header  value` line per column, values wrapped, records apart by a rule (as `psql \x`).
pub(crate) fn print(t: &Table) {
    let mut natural = t.clone();
    natural.set_content_arrangement(ContentArrangement::Disabled);
    let width = width();
    if width.is_none_or(|w| printed_width(&natural) <= usize::from(w)) {
        println!("{t}");
        return;
    }
    let header: Vec<String> = t.header().map(|h| h.cell_iter().map(|c| c.content()).collect()).unwrap_or_default();
    let key_width = header.iter().map(|h| h.chars().count()).max().unwrap_or(0);
    let rule = "─".repeat(width.map_or(40, usize::from).min(80));
    for row in t.row_iter() {
        println!("{rule}");
        for (key, cell) in header.iter().zip(row.cell_iter()) {
            let line = format!("{key:<key_width$}  {}", cell.content());
            println!("{}", wrap(&line, width, key_width + 2));
        }
    }
    println!("{rule}");
}

/// The widest line of `t` as printed.
pub(crate) fn printed_width(t: &Table) -> usize {
    t.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// `text` wrapped at spaces to `width` columns, each line after the first indented by `indent`
/// spaces; a word longer than a line is cut.
pub(crate) fn wrap(text: &str, width: Option<u16>, indent: usize) -> String {
    let Some(width) = width.map(usize::from).filter(|w| *w > indent + 10) else {
        return text.to_owned();
    };
    let mut lines: Vec<String> = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let room = if lines.is_empty() && line.is_empty() { width } else { width - indent };
            let mut word = word.to_owned();
            loop {
                let used = line.chars().count();
                let needed = word.chars().count() + usize::from(used > 0);
                if used + needed <= room || (used == 0 && word.chars().count() <= room) {
                    if used > 0 {
                        line.push(' ');
                    }
                    line.push_str(&word);
                    break;
                }
                if used > 0 {
                    lines.push(std::mem::take(&mut line));
                    continue;
                }
                // A word longer than the line: cut it.
                let head: String = word.chars().take(room).collect();
                word = word.chars().skip(room).collect();
                lines.push(head);
            }
        }
        lines.push(line);
    }
    let pad = " ".repeat(indent);
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 0 { l.clone() } else { format!("{pad}{l}") })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrapped_text_stays_within_the_width() {
        let text = "courses: 15 of 16 program(s) swept, 0 deactivated; blocked: program 42: fetch returned nothing \
                    while 2 rows are active; an_identifier_much_longer_than_one_line_of_forty_columns_is_cut";
        let wrapped = wrap(text, Some(40), 4);
        assert!(wrapped.lines().all(|l| l.chars().count() <= 40), "{wrapped}");
        assert!(wrapped.lines().skip(1).all(|l| l.starts_with("    ")), "{wrapped}");
        assert_eq!(wrapped.split_whitespace().collect::<String>(), text.split_whitespace().collect::<String>());
        assert_eq!(wrap(text, None, 4), text);
    }
}
