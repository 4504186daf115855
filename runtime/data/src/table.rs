//! Parsing rectangular tables of numbers from text (CSV or whitespace
//! separated), with line/column-precise errors.

use crate::DataError;

/// How the cells of a line are separated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sep {
    /// Comma-separated; cells are trimmed of surrounding spaces.
    Comma,
    /// Runs of spaces or tabs.
    Whitespace,
}

/// A table of finite numbers, row-major.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Table {
    /// Number of data rows.
    pub rows: usize,
    /// Number of columns of every row.
    pub cols: usize,
    /// `rows * cols` values.
    pub values: Vec<f64>,
    /// 1-based line number in the file of each row (for later error messages).
    pub lines: Vec<usize>,
}

impl Table {
    /// The value at `row`, `col` (`None` when out of range).
    pub fn get(&self, row: usize, col: usize) -> Option<f64> {
        if col >= self.cols {
            return None;
        }
        self.values
            .get(row.checked_mul(self.cols)?.checked_add(col)?)
            .copied()
    }

    /// The 1-based file line of `row` (0 if unknown).
    pub fn line(&self, row: usize) -> usize {
        self.lines.get(row).copied().unwrap_or(0)
    }
}

/// Shorten a cell for an error message.
fn shown(cell: &str) -> String {
    let mut s: String = cell.chars().take(40).collect();
    if s.len() < cell.len() {
        s.push('…');
    }
    s
}

/// Parse `text` as a table.
///
/// * `name` names the file in errors.
/// * `skip` leading lines are ignored (a header); blank lines are ignored.
/// * `expected_cols`: required column count; `None` takes it from the first row.
///
/// Errors: a cell that is not a finite number (line and column given), a row
/// with the wrong number of columns, no data rows at all.
pub(crate) fn parse_table(
    name: &str,
    text: &str,
    sep: Sep,
    skip: usize,
    expected_cols: Option<usize>,
) -> Result<Table, DataError> {
    let mut cols = expected_cols;
    let mut values = Vec::new();
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate().skip(skip) {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Box<dyn Iterator<Item = &str>> = match sep {
            Sep::Comma => Box::new(line.split(',').map(str::trim)),
            Sep::Whitespace => Box::new(line.split_whitespace()),
        };
        let mut count = 0usize;
        for cell in cells {
            count += 1;
            if cols.is_some_and(|c| count > c) {
                continue; // only count the surplus; reported below
            }
            let value = cell.parse::<f64>().ok().filter(|v| v.is_finite());
            match value {
                Some(v) => values.push(v),
                None if cell.is_empty() => {
                    return Err(DataError::in_file(
                        name,
                        format!("line {line_no}, column {count}: empty cell, expected a number"),
                    ));
                }
                None => {
                    return Err(DataError::in_file(
                        name,
                        format!(
                            "line {line_no}, column {count}: '{}' is not a finite number",
                            shown(cell)
                        ),
                    ));
                }
            }
        }
        match cols {
            Some(c) if c != count => {
                return Err(DataError::in_file(
                    name,
                    format!("line {line_no} has {count} columns, expected {c}"),
                ));
            }
            Some(_) => {}
            None => cols = Some(count),
        }
        lines.push(line_no);
    }
    let rows = lines.len();
    match cols {
        Some(cols) if rows > 0 => Ok(Table {
            rows,
            cols,
            values,
            lines,
        }),
        _ => Err(DataError::in_file(name, "no data rows (empty data)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_and_whitespace() {
        let t = parse_table("f.csv", "h\n1,2\n\n3, 4.5\r\n", Sep::Comma, 1, None).unwrap();
        assert_eq!((t.rows, t.cols), (2, 2));
        assert_eq!(t.values, vec![1.0, 2.0, 3.0, 4.5]);
        assert_eq!(t.lines, vec![2, 4]);
        assert_eq!(t.get(1, 1), Some(4.5));
        assert_eq!(t.get(0, 2), None);
        let t = parse_table("g", " 1\t2  3\n4 5 6\n", Sep::Whitespace, 0, Some(3)).unwrap();
        assert_eq!(t.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn reports_cells_and_columns() {
        let e = parse_table("f.csv", "1,2\n3,x\n", Sep::Comma, 0, None).unwrap_err();
        assert!(e.message().contains("f.csv: line 2, column 2: 'x'"), "{e}");
        let e = parse_table("f.csv", "1,2\n3,\n", Sep::Comma, 0, None).unwrap_err();
        assert!(e.message().contains("line 2, column 2: empty cell"), "{e}");
        let e = parse_table("f.csv", "1,2\n3,4,5\n", Sep::Comma, 0, None).unwrap_err();
        assert!(
            e.message().contains("line 2 has 3 columns, expected 2"),
            "{e}"
        );
        let e = parse_table("f.csv", "1,2\n", Sep::Comma, 0, Some(3)).unwrap_err();
        assert!(
            e.message().contains("line 1 has 2 columns, expected 3"),
            "{e}"
        );
        let e = parse_table("f.csv", "1,nan\n", Sep::Comma, 0, None).unwrap_err();
        assert!(e.message().contains("not a finite number"), "{e}");
        let e = parse_table("f.csv", "header\n\n", Sep::Comma, 1, None).unwrap_err();
        assert!(e.message().contains("f.csv: no data rows"), "{e}");
    }
}
