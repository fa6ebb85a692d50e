//! Tables laid out by [`comfy_table`]: GitHub markdown for `portpool bench`
//! (the README pastes it), plain columns for the demo's report.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

/// How a column's cells sit in its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text.
    Left,
    /// Figures.
    Right,
}

/// A GitHub-markdown table: a header row, a `|---|` rule, one line per row,
/// cells padded to their column's width (left-aligned, as the figures carry
/// labels). A `|` inside a cell is escaped and a line break becomes a space,
/// so each row stays one table row.
pub(crate) fn markdown<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let escape = |cell: &str| cell.replace('|', "\\|").replace(['\r', '\n'], " ");
    let mut table = base(presets::ASCII_MARKDOWN);
    table.set_header(header.iter().map(|h| escape(h)));
    for row in rows {
        table.add_row(row.iter().map(|c| escape(c.as_ref())));
    }
    table.to_string()
}

/// A table without borders for a terminal report, each line indented by
/// `indent`, columns two spaces apart, a rule of `─` under the header.
pub(crate) fn plain<S: AsRef<str>>(header: &[(&str, Align)], rows: &[Vec<S>], indent: &str) -> String {
    use comfy_table::TableComponent::{HeaderLines, MiddleHeaderIntersections, VerticalLines};
    // NOTHING has no component at all; a blank vertical line (set, unlike an
    // absent one, is drawn) keeps the rule's gaps under the columns' gaps.
    let mut table = base(presets::NOTHING);
    table
        .set_header(header.iter().map(|(h, _)| *h))
        .set_style(HeaderLines, '─')
        .set_style(VerticalLines, ' ')
        .set_style(MiddleHeaderIntersections, ' ');
    for row in rows {
        table.add_row(row.iter().map(|c| c.as_ref().replace(['\r', '\n'], " ")));
    }
    for (column, (_, align)) in table.column_iter_mut().zip(header) {
        // One space of padding, one of the (blank) vertical line.
        column.set_padding((0, 1)).set_cell_alignment(match align {
            Align::Left => CellAlignment::Left,
            Align::Right => CellAlignment::Right,
        });
    }
    table
        .lines()
        .map(|line| format!("{indent}{}", line.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn base(preset: &str) -> Table {
    let mut table = Table::new();
    // Never wrap or truncate to a terminal's width: a table is as wide as
    // its content, on a terminal and in a file alike. (Built without
    // comfy-table's `tty` feature: no styling, no terminal queries.)
    table
        .load_preset(preset)
        .set_content_arrangement(ContentArrangement::Disabled);
    table
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What GitHub requires of a table: a header row, a delimiter row of
    /// `-` cells, as many cells on every row, pipes that are not escaped
    /// only as separators.
    pub(crate) fn assert_valid_markdown(text: &str, columns: usize) {
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 2, "{text}");
        let cells = |line: &str| -> Vec<String> {
            assert!(
                line.starts_with('|') && line.ends_with('|'),
                "not a table row: {line:?}"
            );
            let inner = &line[1..line.len() - 1];
            let mut out = vec![String::new()];
            let mut escaped = false;
            for c in inner.chars() {
                match c {
                    '|' if !escaped => out.push(String::new()),
                    _ => out.last_mut().unwrap().push(c),
                }
                escaped = c == '\\';
            }
            out
        };
        for (i, line) in lines.iter().enumerate() {
            let row = cells(line);
            assert_eq!(row.len(), columns, "line {i} has {} cells: {line:?}", row.len());
            if i == 1 {
                assert!(
                    row.iter().all(|c| c.len() >= 3 && c.chars().all(|c| c == '-')),
                    "delimiter row: {line:?}"
                );
            }
        }
        // Padded: every line as wide, the separators in the same columns.
        let pipes = |line: &str| -> Vec<usize> {
            let mut at = Vec::new();
            let mut escaped = false;
            for (i, c) in line.chars().enumerate() {
                if c == '|' && !escaped {
                    at.push(i);
                }
                escaped = c == '\\';
            }
            at
        };
        let first = pipes(lines[0]);
        for line in &lines {
            assert_eq!(pipes(line), first, "misaligned: {line:?}\n{text}");
        }
    }

    #[test]
    fn markdown_is_a_padded_github_table() {
        let text = markdown(
            &["#", "scenario", "ratio (min–max)"],
            &[
                vec!["1", "seq. p50", "1.10x (1.05–1.20)"],
                vec!["2a", "a | b", "-"],
                vec!["4b", "two\nlines", "0.90x"],
            ],
        );
        assert_valid_markdown(&text, 3);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], "| #  | scenario  | ratio (min–max)   |");
        assert_eq!(lines[1], "|----|-----------|-------------------|");
        assert_eq!(lines[2], "| 1  | seq. p50  | 1.10x (1.05–1.20) |");
        assert_eq!(lines[3], "| 2a | a \\| b    | -                 |");
        assert_eq!(lines[4], "| 4b | two lines | 0.90x             |");
    }

    #[test]
    fn plain_aligns_figures_right_and_indents() {
        let text = plain(
            &[
                ("workload", Align::Left),
                ("ok", Align::Right),
                ("p50", Align::Right),
            ],
            &[vec!["cpu", "7", "1.23 ms"], vec!["all", "1234", "45 µs"]],
            "  ",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "  workload    ok      p50",
                "  ───────── ───── ────────",
                "  cpu          7  1.23 ms",
                "  all       1234    45 µs",
            ]
        );
        assert!(
            lines.iter().all(|l| l.starts_with("  ") && !l.ends_with(' ')),
            "{text}"
        );
        assert!(lines[1].trim().chars().all(|c| c == '─' || c == ' '), "{text}");
        // Right-aligned figures end in the same column; text starts in one.
        let end = |line: &str, cell: &str| line.find(cell).unwrap() + cell.len();
        assert_eq!(end(lines[2], " 7"), end(lines[3], "1234"), "{text}");
        assert_eq!(
            lines[2].chars().count(),
            lines[3].chars().count(),
            "rows as wide:\n{text}"
        );
        assert_eq!(lines[2].find("cpu"), lines[3].find("all"), "{text}");
    }
}
