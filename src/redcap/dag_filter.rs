//! An Export Records answer kept to the rows of some data access groups, as it streams
//! (REDCAP.md, "Data export rights": Export Records has no DAG parameter, so the gateway
//! forces `exportDataAccessGroups=true` and drops the rows of other DAGs itself).
//!
//! The filter is fed REDCap's answer in chunks of any size and writes what the caller may
//! see. It holds at most one row (in eav, one record's rows) besides the parser's state,
//! so memory does not grow with the answer. It fails closed: an answer it cannot read, a
//! row over `MAX_ROW`, or a row without its DAG is an error, and the caller's answer is
//! cut off there. Formats, each on a well-kept parser:
//! - CSV (any `csvDelimiter`, quoted fields with newlines): `csv-core`, field by field,
//!   so kept rows go out byte for byte as REDCap wrote them;
//! - JSON (an array of flat objects): `serde_json`, one object at a time, values kept as
//!   REDCap wrote them (`RawValue`);
//! - XML (`<records><item>...</item></records>`): `quick-xml`, one item at a time.
//!
//! Flat answers have a `redcap_data_access_group` value in every row. In eav answers a
//! record's DAG is the row whose `field_name` is `redcap_data_access_group`; a record's
//! rows are held until the next record starts, then kept or dropped together. A record
//! in no DAG is not shown to a scoped caller (REDCap shows a DAG's users only its
//! records). When the caller did not ask for DAGs the DAG column (eav: row) is removed.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use quick_xml::events::Event;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// REDCap's DAG column.
pub const DAG_COLUMN: &str = "redcap_data_access_group";
/// The largest row (eav: one record's rows) held while it is decided.
pub const MAX_ROW: usize = 16 << 20;

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CSV with this delimiter.
    Csv(u8),
    Json,
    Xml,
}

impl Format {
    /// REDCap's `format` and `csvDelimiter` parameters (`tab` is a tab). `None` for a
    /// format the filter cannot read (odm) or a delimiter REDCap does not offer.
    pub fn of(format: &str, delimiter: Option<&str>) -> Option<Format> {
        match format {
            "json" => Some(Format::Json),
            "xml" => Some(Format::Xml),
            "csv" => match delimiter.unwrap_or(",") {
                "" | "," => Some(Format::Csv(b',')),
                "tab" | "\t" => Some(Format::Csv(b'\t')),
                ";" => Some(Format::Csv(b';')),
                "|" => Some(Format::Csv(b'|')),
                "^" => Some(Format::Csv(b'^')),
                _ => None,
            },
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("REDCap's answer could not be read to scope it to your data access groups: {0}")]
    Unreadable(String),
    /// The answer has rows but no DAG column: the token's owner is in a DAG itself, so
    /// REDCap leaves the column out (and scopes rows to the owner's DAG).
    #[error("REDCap's answer has no redcap_data_access_group column (is the project token's owner in a data access group?)")]
    NoDagColumn,
}

type Result<T> = std::result::Result<T, FilterError>;

fn unreadable(what: impl Into<String>) -> FilterError {
    FilterError::Unreadable(what.into())
}

/// What the caller sees of REDCap's rows.
struct Rows {
    allowed: Arc<BTreeSet<String>>,
    /// The same names, when they are few: compared in place, once per row.
    few: Option<Vec<Allowed>>,
    /// The caller asked for `exportDataAccessGroups`: the DAG column stays.
    keep_column: bool,
    eav: bool,
    format: Format,
    /// Rows written (for JSON's commas).
    written: u64,
    kept: u64,
    dropped: u64,
    /// The DAG of some row has been seen (or the answer ended): nothing is written
    /// before, so a missing column can still be answered with an error.
    decided: bool,
    group: Group,
}

/// An allowed DAG name, and its bytes as a little-endian word when they fit in one.
struct Allowed {
    name: Box<[u8]>,
    word: Option<(usize, u64)>,
}

impl Allowed {
    fn new(name: &str) -> Allowed {
        let name: Box<[u8]> = name.as_bytes().into();
        let word = (name.len() <= 8).then(|| {
            let mut w = [0u8; 8];
            w[..name.len()].copy_from_slice(&name);
            (name.len(), Allowed::word(&w, name.len()))
        });
        Allowed { name, word }
    }

    /// The first `len` (at most 8) of eight bytes, as a word.
    fn word(eight: &[u8], len: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&eight[..8]);
        let mask = if len >= 8 {
            u64::MAX
        } else {
            (1u64 << (len * 8)) - 1
        };
        u64::from_le_bytes(w) & mask
    }
}

/// One eav record's rows, held until the next record starts.
#[derive(Default)]
struct Group {
    record: Option<Vec<u8>>,
    dag: Option<Vec<u8>>,
    bytes: Vec<u8>,
    /// Where each row ends in `bytes`.
    ends: Vec<usize>,
}

/// One row as a format's parser read it.
struct Row<'a> {
    raw: &'a [u8],
    /// The DAG value (flat), or the eav row's `value`.
    dag: Option<&'a [u8]>,
    /// eav: the row's `record` and `field_name`.
    record: Option<&'a [u8]>,
    field: Option<&'a [u8]>,
}

impl Rows {
    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.emit_with(out, |out| out.extend_from_slice(bytes));
    }

    /// Writes one row with `write`, between the format's separators.
    fn emit_with(&mut self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        if self.format == Format::Json && self.written > 0 {
            out.push(b',');
        }
        write(out);
        // One XML item per line, as REDCap writes them.
        if self.format == Format::Xml {
            out.push(b'\n');
        }
        self.written += 1;
    }

    fn allows(&self, dag: &[u8]) -> bool {
        // A scope lists a few short DAG names: comparing the bytes in place beats a UTF-8
        // check, a tree walk and a call to memcmp, once per row.
        if let Some(few) = &self.few {
            return few.iter().any(|a| *a.name == *dag);
        }
        std::str::from_utf8(dag).is_ok_and(|d| self.allowed.contains(d))
    }

    /// `allows(&input[s..e])`, one word compare per allowed name when the value is at most
    /// eight bytes and eight bytes of `input` start at `s` (the plain CSV path: a byte
    /// loop here mispredicts on every row that is dropped).
    #[inline]
    fn allows_at(&self, input: &[u8], s: usize, e: usize) -> bool {
        let len = e - s;
        if let (Some(few), Some(word)) = (&self.few, input.get(s..s + 8)) {
            if len <= 8 {
                let w = Allowed::word(word, len);
                return few.iter().any(|a| a.word == Some((len, w)));
            }
        }
        self.allows(&input[s..e])
    }

    /// A flat row, or an eav row; `strip` writes the row without its DAG column.
    fn row(
        &mut self,
        out: &mut Vec<u8>,
        row: Row<'_>,
        strip: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        if !self.eav {
            let dag = row.dag.ok_or(FilterError::NoDagColumn)?;
            self.decided = true;
            if !self.allows(dag) {
                self.dropped += 1;
                return Ok(());
            }
            self.kept += 1;
            if self.keep_column {
                self.emit(out, row.raw);
            } else {
                self.emit_with(out, strip);
            }
            return Ok(());
        }
        let (Some(record), Some(field)) = (row.record, row.field) else {
            return Err(unreadable("an eav row without record or field_name"));
        };
        if self.group.record.as_deref() != Some(record) {
            self.flush(out);
            self.group.record = Some(record.to_vec());
        }
        if field == DAG_COLUMN.as_bytes() {
            if self.group.dag.is_some() {
                return Err(unreadable("a record with two data access groups"));
            }
            self.group.dag = Some(row.dag.unwrap_or_default().to_vec());
            self.decided = true;
            if !self.keep_column {
                return Ok(());
            }
        }
        if self.group.bytes.len() + row.raw.len() > MAX_ROW {
            return Err(unreadable("one record's rows exceed 16 MiB"));
        }
        self.group.bytes.extend_from_slice(row.raw);
        self.group.ends.push(self.group.bytes.len());
        Ok(())
    }

    /// Ends an eav record: its rows are written if its DAG is allowed.
    fn flush(&mut self, out: &mut Vec<u8>) {
        let g = std::mem::take(&mut self.group);
        let n = g.ends.len() as u64 + u64::from(g.dag.is_some() && !self.keep_column);
        if g.dag.as_deref().is_some_and(|d| self.allows(d)) {
            let mut start = 0;
            for end in g.ends {
                self.emit(out, &g.bytes[start..end]);
                start = end;
            }
            self.kept += n;
        } else {
            self.dropped += n;
        }
        // Keep the allocation for the next record.
        self.group.bytes = g.bytes;
        self.group.bytes.clear();
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.eav {
            let rows = self.group.record.is_some() || self.kept + self.dropped > 0;
            self.flush(out);
            if rows && !self.decided {
                return Err(FilterError::NoDagColumn);
            }
        }
        self.decided = true;
        Ok(())
    }
}

/// The streaming filter. Feed it REDCap's answer, then `finish`; write what it writes to
/// the caller, but nothing before `decided()` (until then the answer may still turn out
/// to be one to refuse whole).
pub struct DagFilter {
    rows: Rows,
    parser: Parser,
}

enum Parser {
    Csv(Box<Csv>),
    Json(Json),
    Xml(Xml),
}

impl DagFilter {
    /// Keeps the rows of `allowed` DAGs; `keep_column`: the caller asked for the DAG
    /// column; `eav`: `type=eav`.
    pub fn new(
        format: Format,
        eav: bool,
        allowed: Arc<BTreeSet<String>>,
        keep_column: bool,
    ) -> DagFilter {
        let parser = match format {
            Format::Csv(d) => Parser::Csv(Box::new(Csv::new(d))),
            Format::Json => Parser::Json(Json::default()),
            Format::Xml => Parser::Xml(Xml::default()),
        };
        DagFilter {
            rows: Rows {
                few: (allowed.len() <= 8)
                    .then(|| allowed.iter().map(|a| Allowed::new(a)).collect()),
                allowed,
                keep_column,
                eav,
                format,
                written: 0,
                kept: 0,
                dropped: 0,
                decided: false,
                group: Group::default(),
            },
            parser,
        }
    }

    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match &mut self.parser {
            Parser::Csv(c) => c.feed(chunk, &mut self.rows, out),
            Parser::Json(j) => j.feed(chunk, &mut self.rows, out),
            Parser::Xml(x) => x.feed(chunk, &mut self.rows, out),
        }
    }

    /// The answer has ended: the last row is decided and the closing written.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        match &mut self.parser {
            Parser::Csv(c) => c.finish(&mut self.rows, out)?,
            Parser::Json(j) => j.finish(&mut self.rows, out)?,
            Parser::Xml(x) => x.finish(&mut self.rows, out)?,
        }
        self.rows.finish(out)
    }

    /// Whether the answer is known to carry DAGs (or ended): from here on what the
    /// filter writes may be sent.
    pub fn decided(&self) -> bool {
        self.rows.decided
    }

    /// Rows kept and dropped so far (eav: value rows).
    pub fn counts(&self) -> (u64, u64) {
        (self.rows.kept, self.rows.dropped)
    }
}

// ---------------------------------------------------------------------------- CSV

/// The header's columns the filter needs.
#[derive(Clone, Copy)]
enum Columns {
    /// A flat answer: where the DAG column is.
    Flat { dag: usize },
    /// An eav answer: the record, field_name and value columns.
    Eav {
        record: usize,
        field: usize,
        value: usize,
    },
}

struct Csv {
    rdr: csv_core::Reader,
    /// The current field, unescaped.
    field: Vec<u8>,
    flen: usize,
    /// The current record's raw bytes, and where each of its fields starts in them.
    raw: Vec<u8>,
    starts: Vec<usize>,
    in_field: bool,
    /// Header names (until the header ends), then the values the filter needs.
    names: Vec<Vec<u8>>,
    columns: Option<Columns>,
    dag: Vec<u8>,
    record: Vec<u8>,
    field_name: Vec<u8>,
    ended: bool,
    delimiter: u8,
    /// A plain line cut by a chunk's end (no quote, no CR in it so far).
    carry: Vec<u8>,
}

impl Csv {
    fn new(delimiter: u8) -> Csv {
        Csv {
            rdr: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            field: vec![0; 1024],
            flen: 0,
            raw: Vec::new(),
            starts: Vec::new(),
            in_field: false,
            names: Vec::new(),
            columns: None,
            dag: Vec::new(),
            record: Vec::new(),
            field_name: Vec::new(),
            ended: false,
            delimiter,
            carry: Vec::new(),
        }
    }

    fn feed(&mut self, input: &[u8], rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        self.drive(input, rows, out)
    }

    /// Reads `input`; an empty one is the end of the answer.
    fn drive(&mut self, mut input: &[u8], rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        let at_end = input.is_empty();
        if at_end && !self.carry.is_empty() {
            // A plain line without its line end: REDCap ends every row.
            return Err(unreadable("CSV ended inside a row"));
        }
        loop {
            if self.ended {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(unreadable("CSV after its end"))
                };
            }
            if !at_end && !self.in_field && self.raw.is_empty() && self.columns.is_some() {
                input = self.plain(input, rows, out)?;
            }
            // csv-core reads an empty input as the end of the answer.
            if input.is_empty() && !at_end {
                return Ok(());
            }
            input = self.core_step(input, at_end, rows, out)?;
        }
    }

    /// One csv-core call: a field (or part of one) of the record being read.
    fn core_step<'a>(
        &mut self,
        input: &'a [u8],
        at_end: bool,
        rows: &mut Rows,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        if !self.in_field {
            self.starts.push(self.raw.len());
            self.in_field = true;
        }
        let (res, nin, nout) = self.rdr.read_field(input, &mut self.field[self.flen..]);
        self.raw.extend_from_slice(&input[..nin]);
        self.flen += nout;
        if self.raw.len() > MAX_ROW {
            return Err(unreadable("a CSV row exceeds 16 MiB"));
        }
        match res {
            csv_core::ReadFieldResult::InputEmpty => {}
            csv_core::ReadFieldResult::OutputFull => {
                let n = self.field.len() * 2;
                self.field.resize(n, 0);
            }
            csv_core::ReadFieldResult::Field { record_end } => {
                self.in_field = false;
                self.end_field();
                self.flen = 0;
                if record_end {
                    if at_end {
                        self.check_last_record()?;
                    }
                    self.end_record(rows, out)?;
                }
            }
            csv_core::ReadFieldResult::End => {
                self.ended = true;
                // What is left can only be blank lines (never passed on).
                self.starts.clear();
                if !self.raw.iter().all(|b| *b == b'\n' || *b == b'\r') {
                    return Err(unreadable("CSV ended inside a row"));
                }
                self.raw.clear();
            }
        }
        Ok(&input[nin..])
    }

    /// Plain rows from a row boundary: a line carried over from the last chunk first,
    /// then `plain_rows`; a plain line cut by the chunk's end is carried over. Returns
    /// what is left for csv-core (a row with a quote or a lone CR onwards).
    fn plain<'a>(
        &mut self,
        input: &'a [u8],
        rows: &mut Rows,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let mut input = input;
        if !self.carry.is_empty() {
            // A carried CR is a line end only with an LF right after it.
            let end = if self.carry.ends_with(b"\r") && input.first() != Some(&b'\n') {
                Some(LineEnd::Special)
            } else {
                line_end(input)
            };
            match end {
                Some(LineEnd::At(len)) => {
                    let mut line = std::mem::take(&mut self.carry);
                    line.extend_from_slice(&input[..len]);
                    self.plain_line(&line, rows, out)?;
                    line.clear();
                    self.carry = line;
                    input = &input[len..];
                }
                Some(LineEnd::Special) => {
                    // A quote or a lone CR: csv-core reads this row from its start.
                    let carried = std::mem::take(&mut self.carry);
                    let mut rest = &carried[..];
                    while !rest.is_empty() {
                        rest = self.core_step(rest, false, rows, out)?;
                    }
                    return Ok(input);
                }
                None => {
                    if self.carry.len() + input.len() > MAX_ROW {
                        return Err(unreadable("a CSV row exceeds 16 MiB"));
                    }
                    self.carry.extend_from_slice(input);
                    return Ok(&[]);
                }
            }
        }
        let used = self.plain_rows(input, rows, out)?;
        let rest = &input[used..];
        if line_end(rest).is_none() {
            // A plain line cut by the chunk's end.
            self.carry.extend_from_slice(rest);
            return Ok(&[]);
        }
        Ok(rest)
    }

    /// Rows that lie whole in `input` and hold no quote and no lone CR, read without
    /// csv-core: memchr finds the line end, a plain loop the few fields needed, many
    /// times faster than csv-core's byte-by-byte reader on REDCap's mostly unquoted rows
    /// (a hand-written fast path, kept to what it can read for certain); every other
    /// row, and the header, go to csv-core. Blank lines are not passed on (by either
    /// path). Returns the bytes used, always whole rows.
    fn plain_rows(&mut self, input: &[u8], rows: &mut Rows, out: &mut Vec<u8>) -> Result<usize> {
        let mut used = 0;
        if let (Some(Columns::Flat { dag }), false) = (self.columns, rows.eav) {
            used = Csv::flat_run(input, self.delimiter, dag, rows, out)?;
        }
        while let Some(LineEnd::At(len)) = line_end(&input[used..]) {
            self.plain_line(&input[used..used + len], rows, out)?;
            used += len;
        }
        Ok(used)
    }

    /// The LF-ended rows of a flat answer up to the first quote or CR of `input` (all of
    /// it, in REDCap's usual answers), many rows per pass: one memchr iterator finds the
    /// line ends and that first quote or CR, and what is kept is copied as runs of
    /// adjacent bytes (between two removed DAG fields, or whole kept rows) rather than
    /// row by row. Writes exactly what `plain_line` would. Returns the bytes used, always
    /// whole rows.
    fn flat_run(
        input: &[u8],
        delimiter: u8,
        dag: usize,
        rows: &mut Rows,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        // Bytes of `input` waiting to be copied to `out`, grown while pieces are adjacent.
        let mut run = 0..0;
        let mut start = 0;
        // One pass finds the line ends and stops at the first quote or CR.
        for nl in memchr::memchr3_iter(b'\n', b'"', b'\r', input) {
            if input[nl] != b'\n' {
                break;
            }
            let line = start..nl + 1;
            start = nl + 1;
            let body = &input[line.start..nl];
            if body.is_empty() {
                continue;
            }
            let Some((s, e)) = field_range(body, delimiter, dag) else {
                return Err(unreadable("a CSV row with fewer fields than its header"));
            };
            rows.decided = true;
            let (s, e) = (line.start + s, line.start + e);
            if !rows.allows_at(input, s, e) {
                rows.dropped += 1;
                continue;
            }
            rows.kept += 1;
            rows.written += 1;
            let pieces = if rows.keep_column {
                [line, 0..0]
            } else if e < nl {
                // The field and the delimiter after it.
                [line.start..s, e + 1..line.end]
            } else {
                // The last field, and the delimiter before it.
                [
                    line.start..s.saturating_sub(1).max(line.start),
                    nl..line.end,
                ]
            };
            for p in pieces {
                if p.is_empty() {
                    continue;
                }
                if p.start == run.end {
                    run.end = p.end;
                } else {
                    out.extend_from_slice(&input[run]);
                    run = p;
                }
            }
        }
        out.extend_from_slice(&input[run]);
        Ok(start)
    }

    /// One plain line, its line end included.
    fn plain_line(&mut self, line: &[u8], rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        let Some(c) = &self.columns else {
            return Err(unreadable("CSV without a header"));
        };
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.is_empty() {
            return Ok(());
        }
        let d = self.delimiter;
        match *c {
            Columns::Flat { dag } => {
                let Some((start, end)) = field_range(body, d, dag) else {
                    return Err(unreadable("a CSV row with fewer fields than its header"));
                };
                let next = (end < body.len()).then_some(end + 1);
                let row = Row {
                    raw: line,
                    dag: Some(&body[start..end]),
                    record: None,
                    field: None,
                };
                rows.row(out, row, |out| Csv::without(out, line, start, next))
            }
            Columns::Eav {
                record,
                field,
                value,
            } => {
                let at = |i: usize| field_range(body, d, i).map(|(s, e)| &body[s..e]);
                let (Some(record), Some(field), Some(value)) = (at(record), at(field), at(value))
                else {
                    return Err(unreadable("an eav row with too few fields"));
                };
                let row = Row {
                    raw: line,
                    dag: Some(value),
                    record: Some(record),
                    field: Some(field),
                };
                rows.row(out, row, |_| {})
            }
        }
    }

    /// csv-core reads a record cut off by the end of the answer as complete; REDCap ends
    /// every row with a line end and closes every quote.
    fn check_last_record(&self) -> Result<()> {
        let last = &self.raw[self.starts.last().copied().unwrap_or(0)..];
        let quotes = last.iter().filter(|b| **b == b'"').count();
        if !self.raw.ends_with(b"\n") || (last.first() == Some(&b'"') && quotes % 2 == 1) {
            return Err(unreadable("CSV ended inside a row"));
        }
        Ok(())
    }

    fn end_field(&mut self) {
        let value = &self.field[..self.flen];
        let i = self.starts.len() - 1;
        match &self.columns {
            None => self.names.push(value.to_vec()),
            Some(c) => {
                let slot = match *c {
                    Columns::Flat { dag } => (i == dag).then_some(&mut self.dag),
                    Columns::Eav {
                        record,
                        field,
                        value: v,
                    } => {
                        if i == record {
                            Some(&mut self.record)
                        } else if i == field {
                            Some(&mut self.field_name)
                        } else if i == v {
                            Some(&mut self.dag)
                        } else {
                            None
                        }
                    }
                };
                if let Some(s) = slot {
                    s.clear();
                    s.extend_from_slice(value);
                }
            }
        }
    }

    /// Writes the raw record without field `k` (its delimiter with it), line end kept.
    /// `next`: where field `k + 1` starts, if there is one.
    fn without(out: &mut Vec<u8>, raw: &[u8], start: usize, next: Option<usize>) {
        match next {
            Some(n) => {
                out.extend_from_slice(&raw[..start]);
                out.extend_from_slice(&raw[n..]);
            }
            None => {
                let body_end = raw.len()
                    - if raw.ends_with(b"\r\n") {
                        2
                    } else {
                        usize::from(raw.ends_with(b"\n"))
                    };
                out.extend_from_slice(&raw[..start.saturating_sub(1)]);
                out.extend_from_slice(&raw[body_end..]);
            }
        }
    }

    fn end_record(&mut self, rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        // As the plain path writes rows: no blank lines before, CRLF whole (csv-core ends
        // a record at a CR that closes its input; the LF comes with the next).
        let blank = self
            .raw
            .iter()
            .take_while(|b| **b == b'\n' || **b == b'\r')
            .count();
        if blank > 0 {
            self.raw.drain(..blank);
            for s in &mut self.starts {
                *s = s.saturating_sub(blank);
            }
        }
        if self.raw.ends_with(b"\r") {
            self.raw.push(b'\n');
        }
        let n = self.starts.len();
        let result = match self.columns {
            None => self.header(rows, out),
            Some(Columns::Flat { dag: k }) => {
                if k >= n {
                    return Err(unreadable("a CSV row with fewer fields than its header"));
                }
                let row = Row {
                    raw: &self.raw,
                    dag: Some(&self.dag[..]),
                    record: None,
                    field: None,
                };
                let (raw, starts) = (&self.raw, &self.starts);
                rows.row(out, row, |out| {
                    Csv::without(out, raw, starts[k], starts.get(k + 1).copied())
                })
            }
            Some(Columns::Eav {
                record,
                field,
                value,
            }) => {
                if n <= record.max(field).max(value) {
                    return Err(unreadable("an eav row with too few fields"));
                }
                let row = Row {
                    raw: &self.raw,
                    dag: Some(&self.dag),
                    record: Some(&self.record),
                    field: Some(&self.field_name),
                };
                rows.row(out, row, |_| {})
            }
        };
        self.raw.clear();
        self.starts.clear();
        result
    }

    fn header(&mut self, rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        let names = std::mem::take(&mut self.names);
        let at = |name: &str| {
            names.iter().enumerate().position(|(i, n)| {
                // A byte order mark may lead the first name.
                let n = if i == 0 {
                    n.strip_prefix("\u{feff}".as_bytes()).unwrap_or(n)
                } else {
                    n
                };
                n == name.as_bytes()
            })
        };
        if rows.eav {
            let (Some(record), Some(field), Some(value)) =
                (at("record"), at("field_name"), at("value"))
            else {
                return Err(unreadable(
                    "the eav header lacks record, field_name or value",
                ));
            };
            self.columns = Some(Columns::Eav {
                record,
                field,
                value,
            });
            out.extend_from_slice(&self.raw);
            return Ok(());
        }
        let dag = at(DAG_COLUMN).ok_or(FilterError::NoDagColumn)?;
        self.columns = Some(Columns::Flat { dag });
        rows.decided = true;
        if rows.keep_column {
            out.extend_from_slice(&self.raw);
        } else {
            Csv::without(
                out,
                &self.raw,
                self.starts[dag],
                self.starts.get(dag + 1).copied(),
            );
        }
        Ok(())
    }

    fn finish(&mut self, rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        self.drive(&[], rows, out)?;
        if !self.ended {
            return Err(unreadable("CSV did not end"));
        }
        Ok(())
    }
}

/// How the next line of plain CSV ends.
enum LineEnd {
    /// After this many bytes (LF or CRLF included).
    At(usize),
    /// A quote or a lone CR comes first: csv-core must read the row.
    Special,
}

/// Scans for the first LF, quote or CR (one memchr3 pass); `None`: none in `rest`, or
/// a CR at its very end (its LF may come next).
fn line_end(rest: &[u8]) -> Option<LineEnd> {
    let i = memchr::memchr3(b'\n', b'"', b'\r', rest)?;
    match rest[i] {
        b'\n' => Some(LineEnd::At(i + 1)),
        b'\r' => match rest.get(i + 1) {
            Some(b'\n') => Some(LineEnd::At(i + 2)),
            Some(_) => Some(LineEnd::Special),
            None => None,
        },
        _ => Some(LineEnd::Special),
    }
}

/// Where field `i` of an unquoted line lies.
#[inline]
fn field_range(body: &[u8], delimiter: u8, i: usize) -> Option<(usize, usize)> {
    let mut start = 0;
    for _ in 0..i {
        start = next_byte(body, start, delimiter)? + 1;
    }
    let end = next_byte(body, start, delimiter).unwrap_or(body.len());
    Some((start, end))
}

/// The first `byte` in `body[from..]`, eight bytes per step. (The fields the filter
/// reads come first in REDCap's rows, a few bytes in: memchr's setup per call costs more
/// than that, and a byte loop is the filter's hottest code; this is the word-at-a-time
/// search of memchr's own fallback, kept inline.)
#[inline]
fn next_byte(body: &[u8], mut from: usize, byte: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = body.get(from..from + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w) ^ (LO * u64::from(byte));
        // The lowest flagged byte is the first zero byte of x (flags above it may be
        // false, never below).
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(from + (found.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    body.get(from..)?
        .iter()
        .position(|b| *b == byte)
        .map(|p| from + p)
}

// ---------------------------------------------------------------------------- JSON

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum JsonAt {
    #[default]
    Start,
    /// After `[`: an object or `]`.
    First,
    /// After an object: `,` or `]`.
    Next,
    /// After `,`: an object.
    Value,
    Done,
}

#[derive(Default)]
struct Json {
    pending: Vec<u8>,
    at: JsonAt,
}

/// One flat object, its values as REDCap wrote them.
struct Pairs<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Pairs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a record object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Pairs<'de>, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<Key<'de>>()? {
                    v.push((k.0, m.next_value::<&'de RawValue>()?));
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON string value, unescaped.
fn json_str(raw: &RawValue) -> Result<Cow<'_, str>> {
    serde_json::from_str::<Cow<'_, str>>(raw.get())
        .map_err(|_| unreadable("a record value that is not a string"))
}

impl Json {
    fn skip_ws(&self, mut pos: usize) -> usize {
        while pos < self.pending.len() && matches!(self.pending[pos], b' ' | b'\t' | b'\n' | b'\r')
        {
            pos += 1;
        }
        pos
    }

    fn feed(&mut self, chunk: &[u8], rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        self.pending.extend_from_slice(chunk);
        let mut pos = 0;
        if self.at == JsonAt::Start {
            const BOM: &[u8] = "\u{feff}".as_bytes();
            if self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                // A byte order mark cut by the chunk's end: wait for the rest of it.
                return Ok(());
            }
            if self.pending.starts_with(BOM) {
                pos = BOM.len();
            }
        }
        loop {
            pos = self.skip_ws(pos);
            let Some(&c) = self.pending.get(pos) else {
                break;
            };
            match (self.at, c) {
                (JsonAt::Start, b'[') => {
                    out.push(b'[');
                    self.at = JsonAt::First;
                    pos += 1;
                }
                (JsonAt::First | JsonAt::Next, b']') => {
                    self.at = JsonAt::Done;
                    pos += 1;
                }
                (JsonAt::Next, b',') => {
                    self.at = JsonAt::Value;
                    pos += 1;
                }
                (JsonAt::First | JsonAt::Value, b'{') => {
                    let mut it = serde_json::Deserializer::from_slice(&self.pending[pos..])
                        .into_iter::<Pairs>();
                    let pairs = match it.next() {
                        Some(Ok(p)) => p,
                        Some(Err(e)) if !e.is_eof() => {
                            return Err(unreadable(format!("JSON: {e}")))
                        }
                        _ => {
                            if self.pending.len() - pos > MAX_ROW {
                                return Err(unreadable("a JSON record exceeds 16 MiB"));
                            }
                            break;
                        }
                    };
                    let end = pos + it.byte_offset();
                    Json::row(&self.pending[pos..end], pairs, rows, out)?;
                    self.at = JsonAt::Next;
                    pos = end;
                }
                _ => return Err(unreadable("JSON that is not an array of records")),
            }
        }
        self.pending.drain(..pos);
        Ok(())
    }

    fn row(raw: &[u8], pairs: Pairs<'_>, rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        let find = |k: &str| {
            pairs
                .0
                .iter()
                .find(|(n, _)| n.as_ref() == k)
                .map(|(_, v)| *v)
        };
        let mut seen = BTreeSet::new();
        if !pairs.0.iter().all(|(k, _)| seen.insert(k.as_ref())) {
            return Err(unreadable("a JSON record with a key twice"));
        }
        // REDCap writes every value as a string.
        if !pairs.0.iter().all(|(_, v)| v.get().starts_with('"')) {
            return Err(unreadable("a JSON record value that is not a string"));
        }
        let (dag, record, field);
        if rows.eav {
            dag = find("value").map(json_str).transpose()?;
            record = find("record").map(json_str).transpose()?;
            field = find("field_name").map(json_str).transpose()?;
        } else {
            dag = find(DAG_COLUMN).map(json_str).transpose()?;
            record = None;
            field = None;
        }
        let row = Row {
            raw,
            dag: dag.as_deref().map(str::as_bytes),
            record: record.as_deref().map(str::as_bytes),
            field: field.as_deref().map(str::as_bytes),
        };
        rows.row(out, row, |v| {
            v.push(b'{');
            let mut first = true;
            for (k, val) in pairs.0.iter().filter(|(k, _)| k.as_ref() != DAG_COLUMN) {
                if !first {
                    v.push(b',');
                }
                first = false;
                let _ = serde_json::to_writer(&mut *v, k.as_ref());
                v.push(b':');
                v.extend_from_slice(val.get().as_bytes());
            }
            v.push(b'}');
        })
    }

    fn finish(&mut self, rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        let rest = self.skip_ws(0);
        if self.at != JsonAt::Done || rest != self.pending.len() {
            return Err(unreadable("JSON ended before its array did"));
        }
        rows.flush_group_then(out, b"]");
        Ok(())
    }
}

impl Rows {
    /// Ends the last eav record before a format's closing bytes.
    fn flush_group_then(&mut self, out: &mut Vec<u8>, closing: &[u8]) {
        if self.eav {
            self.flush(out);
        }
        out.extend_from_slice(closing);
    }
}

// ---------------------------------------------------------------------------- XML

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum XmlAt {
    #[default]
    Prolog,
    Items,
    Done,
}

#[derive(Default)]
struct Xml {
    pending: Vec<u8>,
    at: XmlAt,
    /// The answer was `<records/>`.
    self_closed: bool,
}

/// What an item holds for the filter.
#[derive(Default)]
struct Item {
    dag: Option<Vec<u8>>,
    /// The DAG element's span in the item.
    dag_span: Option<(usize, usize)>,
    record: Option<Vec<u8>>,
    field: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

enum Step {
    /// Consumed this many bytes.
    Took(usize),
    /// Wait for more input.
    More,
}

impl Xml {
    fn feed(&mut self, chunk: &[u8], rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        self.pending.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let step = match self.at {
                XmlAt::Prolog => self.prolog(pos, out)?,
                XmlAt::Items => self.item(pos, rows, out)?,
                XmlAt::Done => break,
            };
            match step {
                Step::Took(n) => pos += n,
                Step::More => {
                    if self.pending.len() - pos > MAX_ROW {
                        return Err(unreadable("an XML item exceeds 16 MiB or cannot be read"));
                    }
                    break;
                }
            }
        }
        self.pending.drain(..pos);
        Ok(())
    }

    fn reader(bytes: &[u8]) -> quick_xml::Reader<&[u8]> {
        let mut r = quick_xml::Reader::from_reader(bytes);
        r.config_mut().check_end_names = true;
        r
    }

    /// Up to and including `<records>`.
    fn prolog(&mut self, pos: usize, out: &mut Vec<u8>) -> Result<Step> {
        let bytes = &self.pending[pos..];
        let mut r = Xml::reader(bytes);
        loop {
            match r.read_event() {
                Ok(Event::Decl(_) | Event::Comment(_) | Event::PI(_)) => {}
                Ok(Event::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => {
                    if r.buffer_position() as usize == bytes.len() {
                        // Whitespace to the end: the next tag may not be here yet.
                        return Ok(Step::More);
                    }
                }
                Ok(Event::Start(s)) if s.name().as_ref() == b"records" => {
                    let end = r.buffer_position() as usize;
                    out.extend_from_slice(&bytes[..end]);
                    self.at = XmlAt::Items;
                    return Ok(Step::Took(end));
                }
                Ok(Event::Empty(s)) if s.name().as_ref() == b"records" => {
                    let end = r.buffer_position() as usize;
                    out.extend_from_slice(&bytes[..end]);
                    self.at = XmlAt::Done;
                    self.self_closed = true;
                    return Ok(Step::Took(end));
                }
                Ok(Event::DocType(_)) => return Err(unreadable("XML with a DTD")),
                // The end of what has come, or a tag cut by it: `feed` bounds the wait
                // and `finish` refuses what never became a document.
                Ok(Event::Eof) | Err(_) => return Ok(Step::More),
                Ok(_) => return Err(unreadable("XML that is not <records>")),
            }
        }
    }

    /// One `<item>`, the whitespace before it, or `</records>`.
    fn item(&mut self, pos: usize, rows: &mut Rows, out: &mut Vec<u8>) -> Result<Step> {
        let bytes = &self.pending[pos..];
        let ws = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if ws == bytes.len() {
            return Ok(if ws > 0 { Step::Took(ws) } else { Step::More });
        }
        if ws > 0 {
            return Ok(Step::Took(ws));
        }
        if bytes.starts_with(b"</") {
            // `</records>` (checked by `finish`) and what follows stay pending.
            self.at = XmlAt::Done;
            return Ok(Step::Took(0));
        }
        let mut r = Xml::reader(bytes);
        match r.read_event() {
            Ok(Event::Start(s)) if s.name().as_ref() == b"item" => {}
            Ok(Event::Empty(s)) if s.name().as_ref() == b"item" => {
                return Err(unreadable("an empty XML item"));
            }
            Ok(Event::Eof) | Err(_) => return Ok(Step::More),
            Ok(_) => return Err(unreadable("XML records hold something but items")),
        }
        let mut item = Item::default();
        let mut child: Option<(Vec<u8>, usize)> = None;
        let mut text: Vec<u8> = Vec::new();
        let end = loop {
            let before = r.buffer_position() as usize;
            let ev = match r.read_event() {
                Ok(Event::Eof) | Err(_) => return Ok(Step::More),
                Ok(ev) => ev,
            };
            match ev {
                Event::Start(s) if child.is_none() => {
                    child = Some((s.name().as_ref().to_vec(), before));
                    text.clear();
                }
                Event::Empty(s) if child.is_none() => {
                    let name = s.name().as_ref().to_vec();
                    let span = (before, r.buffer_position() as usize);
                    item.set(&name, Vec::new(), span);
                }
                Event::Text(t) if child.is_some() => {
                    let t = t
                        .decode()
                        .map_err(|e| unreadable(format!("XML text: {e}")))?;
                    text.extend_from_slice(t.as_bytes());
                }
                Event::CData(c) if child.is_some() => text.extend_from_slice(&c),
                Event::GeneralRef(g) if child.is_some() => {
                    let s = match g.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => {
                            let name = String::from_utf8_lossy(&g).into_owned();
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .ok_or_else(|| unreadable(format!("XML entity &{name};")))?
                                .to_string()
                        }
                    };
                    text.extend_from_slice(s.as_bytes());
                }
                Event::End(_) if child.is_some() => {
                    if let Some((name, start)) = child.take() {
                        item.set(
                            &name,
                            std::mem::take(&mut text),
                            (start, r.buffer_position() as usize),
                        );
                    }
                }
                Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => {}
                Event::End(e) if e.name().as_ref() == b"item" => {
                    break r.buffer_position() as usize
                }
                Event::Comment(_) => {}
                _ => return Err(unreadable("an XML item that is not flat")),
            }
        };
        let raw = &bytes[..end];
        let row = Row {
            raw,
            dag: if rows.eav {
                item.value.as_deref()
            } else {
                item.dag.as_deref()
            },
            record: item.record.as_deref(),
            field: item.field.as_deref(),
        };
        let span = item.dag_span;
        rows.row(out, row, |v| match span {
            Some((s, e)) => {
                v.extend_from_slice(&raw[..s]);
                v.extend_from_slice(&raw[e..]);
            }
            None => v.extend_from_slice(raw),
        })?;
        Ok(Step::Took(end))
    }

    fn finish(&mut self, rows: &mut Rows, out: &mut Vec<u8>) -> Result<()> {
        if self.at != XmlAt::Done {
            return Err(unreadable("XML ended before </records>"));
        }
        // What is left is `</records>` (or nothing after `<records/>`) and whitespace.
        let rest = std::mem::take(&mut self.pending);
        let mut r = Xml::reader(&rest);
        r.config_mut().allow_unmatched_ends = true;
        let mut closed = false;
        loop {
            match r.read_event() {
                Ok(Event::End(e)) if e.name().as_ref() == b"records" && !closed => closed = true,
                Ok(Event::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Event::Comment(_)) => {}
                Ok(Event::Eof) => break,
                _ => return Err(unreadable("XML after </records>")),
            }
        }
        if !closed && !self.self_closed {
            return Err(unreadable("XML ended before </records>"));
        }
        rows.flush_group_then(out, &rest);
        Ok(())
    }
}

impl Item {
    fn set(&mut self, name: &[u8], value: Vec<u8>, span: (usize, usize)) {
        match name {
            b"redcap_data_access_group" => {
                self.dag = Some(value);
                self.dag_span = Some(span);
            }
            b"record" => self.record = Some(value),
            b"field_name" => self.field = Some(value),
            b"value" => self.value = Some(value),
            _ => {}
        }
    }
}

// The fake REDCap's writer is these tests' reference for REDCap's formats.
#[cfg(all(test, feature = "dev"))]
mod tests {
    use super::*;
    use crate::fake_redcap::data::{parse_rows, write_rows, Row as DataRow};

    fn allowed(dags: &[&str]) -> Arc<BTreeSet<String>> {
        Arc::new(dags.iter().map(|d| d.to_string()).collect())
    }

    /// Feeds `input` in chunks cut at `cuts`; returns the output or the error.
    fn run(
        format: Format,
        eav: bool,
        keep: bool,
        input: &[u8],
        cuts: &[usize],
    ) -> std::result::Result<Vec<u8>, FilterError> {
        let mut f = DagFilter::new(format, eav, allowed(&["site_a", "site_c"]), keep);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(at, input.len());
            f.feed(&input[at..c], &mut out)?;
            at = c;
        }
        f.finish(&mut out)?;
        assert!(f.decided());
        Ok(out)
    }

    fn records(with_dag: bool) -> Vec<DataRow> {
        let dags = ["site_a", "site_b", "site_c", "", "site_a", "site_b"];
        dags.iter()
            .enumerate()
            .map(|(i, d)| {
                let id = (i + 1).to_string();
                let mut pairs = vec![("record_id", id.as_str())];
                if with_dag {
                    pairs.push((DAG_COLUMN, d));
                }
                pairs.push(("notes", "line one\nline \"two\", with a comma"));
                pairs.push(("age", "41"));
                DataRow::of(&pairs)
            })
            .collect()
    }

    fn ids(format: &str, out: &[u8]) -> Vec<String> {
        parse_rows(format, out)
            .unwrap_or_else(|e| panic!("{format}: {e}: {}", String::from_utf8_lossy(out)))
            .iter()
            .map(|r| r.get("record_id").unwrap_or("?").to_string())
            .collect()
    }

    fn format_of(name: &str) -> Format {
        Format::of(name, None).unwrap()
    }

    #[test]
    fn only_rows_of_allowed_dags_in_every_format_and_chunking() {
        for name in ["json", "csv", "xml"] {
            let (text, _) = write_rows(name, &records(true));
            let input = text.as_bytes();
            for keep in [true, false] {
                let whole = run(format_of(name), false, keep, input, &[]).unwrap();
                assert_eq!(ids(name, &whole), ["1", "3", "5"], "{name}");
                let rows = parse_rows(name, &whole).unwrap();
                for r in &rows {
                    assert_eq!(r.get(DAG_COLUMN).is_some(), keep, "{name} keep={keep}");
                    assert_eq!(r.get("notes"), Some("line one\nline \"two\", with a comma"));
                }
                // A row split across chunks anywhere: the same answer.
                for cut in 0..=input.len() {
                    let split = run(format_of(name), false, keep, input, &[cut]).unwrap();
                    assert_eq!(split, whole, "{name} cut at {cut}");
                }
                let bytes: Vec<usize> = (1..input.len()).collect();
                assert_eq!(
                    run(format_of(name), false, keep, input, &bytes).unwrap(),
                    whole
                );
            }
        }
    }

    #[test]
    fn kept_csv_rows_go_out_byte_for_byte() {
        let input = b"record_id,redcap_data_access_group,notes\n1,site_a,\"a\r\nb\"\n2,site_b,x\n3,site_c,\"q\"\"uote\"\n";
        let out = run(Format::Csv(b','), false, true, input, &[]).unwrap();
        assert_eq!(
            out,
            b"record_id,redcap_data_access_group,notes\n1,site_a,\"a\r\nb\"\n3,site_c,\"q\"\"uote\"\n"
        );
        let out = run(Format::Csv(b','), false, false, input, &[]).unwrap();
        assert_eq!(out, b"record_id,notes\n1,\"a\r\nb\"\n3,\"q\"\"uote\"\n");
        // The DAG column last, CRLF line ends.
        let input = b"record_id,redcap_data_access_group\r\n1,site_a\r\n2,site_b\r\n";
        let out = run(Format::Csv(b','), false, false, input, &[]).unwrap();
        assert_eq!(out, b"record_id\r\n1\r\n");
    }

    #[test]
    fn blank_lines_and_crlf_at_every_cut() {
        let input = b"record_id,redcap_data_access_group,notes\r\n\r\n1,site_a,x\r\n2,site_b,\"q\r\nr\"\r\n\n3,site_c,\"y\"\r\n4,site_a,z\n\n";
        for keep in [true, false] {
            let whole = run(Format::Csv(b','), false, keep, input, &[]).unwrap();
            let want: &[u8] = if keep {
                b"record_id,redcap_data_access_group,notes\r\n1,site_a,x\r\n3,site_c,\"y\"\r\n4,site_a,z\n"
            } else {
                b"record_id,notes\r\n1,x\r\n3,\"y\"\r\n4,z\n"
            };
            assert_eq!(
                String::from_utf8_lossy(&whole),
                String::from_utf8_lossy(want)
            );
            for cut in 0..=input.len() {
                for cut2 in cut..=input.len() {
                    let split = run(Format::Csv(b','), false, keep, input, &[cut, cut2]).unwrap();
                    assert_eq!(split, whole, "cut at {cut}, {cut2}");
                }
            }
        }
    }

    /// Tricky CSV (lone CRs, CRs at a cut, quotes after plain text, short rows) gives the
    /// same answer, or the same refusal, however it is cut.
    #[test]
    fn csv_results_do_not_depend_on_the_cuts() {
        let inputs: &[&[u8]] = &[
            b"record_id,redcap_data_access_group\n1,site_a\r2,site_a\n3,site_b\n",
            b"record_id,redcap_data_access_group,n\n1,site_a,x\ry\n",
            b"record_id,redcap_data_access_group,n\n1,site_a,ab\"c\"\n2,site_a,\"q\"\n",
            b"record_id,redcap_data_access_group,n\r\n1,site_a,x\r\n2\r\n",
            b"record_id,redcap_data_access_group\n1,site_a\n2,site_a",
            b"record_id,redcap_data_access_group\n1,site_a\r",
        ];
        for input in inputs {
            for keep in [true, false] {
                let whole = run(Format::Csv(b','), false, keep, input, &[]);
                for cut in 0..=input.len() {
                    for cut2 in cut..=input.len() {
                        let split = run(Format::Csv(b','), false, keep, input, &[cut, cut2]);
                        assert_eq!(
                            split.is_ok(),
                            whole.is_ok(),
                            "{:?} cut at {cut},{cut2}: {split:?} vs {whole:?}",
                            String::from_utf8_lossy(input)
                        );
                        if let (Ok(a), Ok(b)) = (&split, &whole) {
                            assert_eq!(
                                a,
                                b,
                                "{:?} cut at {cut},{cut2}",
                                String::from_utf8_lossy(input)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn other_delimiters() {
        for (name, d) in [("tab", b'\t'), (";", b';'), ("|", b'|'), ("^", b'^')] {
            let text = "record_id,redcap_data_access_group,notes\n1,site_a,\"x,y\"\n2,site_b,z\n"
                .replace(',', &(d as char).to_string());
            let f = Format::of("csv", Some(name)).unwrap();
            let out = run(f, false, true, text.as_bytes(), &[]).unwrap();
            let want = text
                .lines()
                .take(2)
                .map(|l| format!("{l}\n"))
                .collect::<String>();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{name}");
        }
        assert_eq!(Format::of("csv", Some("x")), Option::None);
        assert_eq!(Format::of("odm", None), Option::None);
    }

    #[test]
    fn eav_rows_follow_their_records_dag() {
        let mut rows = Vec::new();
        for (id, dag) in [("1", "site_a"), ("2", "site_b"), ("3", ""), ("4", "site_c")] {
            rows.push(DataRow::of(&[
                ("record", id),
                ("field_name", "record_id"),
                ("value", id),
            ]));
            if !dag.is_empty() {
                rows.push(DataRow::of(&[
                    ("record", id),
                    ("field_name", DAG_COLUMN),
                    ("value", dag),
                ]));
            }
            rows.push(DataRow::of(&[
                ("record", id),
                ("field_name", "age"),
                ("value", "40"),
            ]));
        }
        for name in ["json", "csv", "xml"] {
            let (text, _) = write_rows(name, &rows);
            for keep in [true, false] {
                let out = run(format_of(name), true, keep, text.as_bytes(), &[]).unwrap();
                let got = parse_rows(name, &out).unwrap();
                let recs: BTreeSet<&str> = got.iter().map(|r| r.get("record").unwrap()).collect();
                assert_eq!(recs, ["1", "4"].into_iter().collect(), "{name}");
                let dag_rows = got
                    .iter()
                    .filter(|r| r.get("field_name") == Some(DAG_COLUMN))
                    .count();
                assert_eq!(dag_rows, if keep { 2 } else { 0 }, "{name} keep={keep}");
                for cut in 0..=text.len() {
                    assert_eq!(
                        run(format_of(name), true, keep, text.as_bytes(), &[cut]).unwrap(),
                        out,
                        "{name} cut at {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn answers_without_the_dag_column_are_refused() {
        for name in ["json", "csv", "xml"] {
            let (text, _) = write_rows(name, &records(false));
            let mut f = DagFilter::new(format_of(name), false, allowed(&["site_a"]), true);
            let mut out = Vec::new();
            assert_eq!(
                f.feed(text.as_bytes(), &mut out),
                Err(FilterError::NoDagColumn),
                "{name}"
            );
            assert!(!f.decided());
        }
        // No records at all: nothing to hide.
        for (name, empty) in [
            ("json", "[]"),
            ("csv", ""),
            (
                "xml",
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<records>\n</records>",
            ),
        ] {
            let out = run(format_of(name), false, false, empty.as_bytes(), &[]).unwrap();
            assert!(parse_rows(name, &out).unwrap().is_empty(), "{name}");
        }
    }

    #[test]
    fn malformed_answers_are_cut_off() {
        let bad: &[(&str, &str)] = &[
            ("json", "[{\"record_id\":\"1\",\"redcap_data_access_group\":\"site_a\"}"),
            ("json", "[{\"record_id\":\"1\",\"redcap_data_access_group\":\"site_a\"},]"),
            ("json", "[{\"redcap_data_access_group\":\"site_b\",\"redcap_data_access_group\":\"site_a\"}]"),
            ("json", "[{\"redcap_data_access_group\":[\"site_a\"]}]"),
            ("json", "[{\"redcap_data_access_group\":\"site_a\",\"n\":{\"a\":\"1\"}}]"),
            ("json", "{\"error\":\"x\"}"),
            ("json", "[\"site_a\"]"),
            ("json", "[] []"),
            ("csv", "record_id,redcap_data_access_group\n1,\"site_a"),
            ("csv", "record_id,redcap_data_access_group\n1\n"),
            ("xml", "<records><item><redcap_data_access_group>site_a</redcap_data_access_group>"),
            ("xml", "<records><item><a><b>x</b></a></item></records>"),
            ("xml", "<records><item><redcap_data_access_group>site_a</x></item></records>"),
            ("xml", "<!DOCTYPE x><records></records>"),
            ("xml", "<records></records><item/>"),
            ("xml", "<rows></rows>"),
        ];
        for (name, text) in bad {
            let r = run(format_of(name), false, true, text.as_bytes(), &[]);
            assert!(
                r.is_err(),
                "{name}: {text} -> {:?}",
                r.map(|o| String::from_utf8_lossy(&o).into_owned())
            );
        }
    }

    /// Found by the dag_filter fuzz target: a JSON answer's byte order mark cut by a
    /// chunk's end was refused, while the same answer whole was read.
    #[test]
    fn a_json_byte_order_mark_cut_anywhere() {
        let allowed = Arc::new(BTreeSet::from(["site_a".to_string()]));
        let body: &[u8] =
            b"\xef\xbb\xbf[{\"record_id\":\"1\",\"redcap_data_access_group\":\"site_a\"}]";
        let read = |step: usize| {
            let mut f = DagFilter::new(Format::Json, false, allowed.clone(), true);
            let mut out = Vec::new();
            for chunk in body.chunks(step) {
                f.feed(chunk, &mut out).ok()?;
            }
            f.finish(&mut out).ok()?;
            Some(out)
        };
        let whole = read(body.len());
        assert!(whole.is_some());
        for step in 1..body.len() {
            assert_eq!(read(step), whole, "{step}-byte chunks");
        }
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        const DAGS: [&str; 4] = ["site_a", "site_b", "site_c", ""];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// The plain path's word-at-a-time field search and DAG compare agree with
            /// splitting the line and comparing strings, for names that are prefixes of
            /// each other, of every length around a word's eight bytes.
            #[test]
            fn word_at_a_time_search_and_compare_agree_with_split(
                line in "[ab,_]{0,40}",
                i in 0..6usize,
                allowed in prop::collection::btree_set("[ab_]{0,10}", 1..4),
            ) {
                let body = line.as_bytes();
                let fields: Vec<&str> = line.split(',').collect();
                let expected = fields.get(i).map(|f| {
                    let start: usize = fields[..i].iter().map(|f| f.len() + 1).sum();
                    (start, start + f.len())
                });
                prop_assert_eq!(field_range(body, b',', i), expected);
                let f = DagFilter::new(Format::Csv(b','), false, Arc::new(allowed.clone()), false);
                if let Some((s, e)) = expected {
                    prop_assert_eq!(
                        f.rows.allows_at(body, s, e),
                        allowed.contains(&line[s..e]),
                        "{:?} in {:?}", &line[s..e], allowed
                    );
                }
            }

            /// For random records, DAG assignments, values (quotes, commas, newlines,
            /// markup), formats and chunkings, a scoped caller receives exactly the rows
            /// of its DAGs, in order, each whole.
            #[test]
            fn exactly_the_rows_of_the_allowed_dags(
                dags in prop::collection::vec(0..DAGS.len(), 0..12),
                values in prop::collection::vec("[a-z ,\"\n<>&;]{0,6}", 12),
                format in 0..3usize,
                eav in any::<bool>(),
                keep in any::<bool>(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let name = ["json", "csv", "xml"][format];
                let mut rows = Vec::new();
                for (i, d) in dags.iter().enumerate() {
                    let id = (i + 1).to_string();
                    let v = values[i].as_str();
                    if eav {
                        rows.push(DataRow::of(&[("record", &id), ("field_name", "record_id"), ("value", &id)]));
                        if !DAGS[*d].is_empty() {
                            rows.push(DataRow::of(&[("record", &id), ("field_name", DAG_COLUMN), ("value", DAGS[*d])]));
                        }
                        rows.push(DataRow::of(&[("record", &id), ("field_name", "notes"), ("value", v)]));
                    } else {
                        rows.push(DataRow::of(&[("record_id", &id), (DAG_COLUMN, DAGS[*d]), ("notes", v)]));
                    }
                }
                let (text, _) = write_rows(name, &rows);
                let input = text.as_bytes();
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
                cuts.sort_unstable();
                let out = run(format_of(name), eav, keep, input, &cuts);
                let any_dag = dags.iter().any(|d| !DAGS[*d].is_empty());
                if eav && !rows.is_empty() && !any_dag {
                    prop_assert_eq!(out, Err(FilterError::NoDagColumn));
                    return Ok(());
                }
                let out = out.unwrap();
                let got = if out.is_empty() { Vec::new() } else { parse_rows(name, &out).unwrap() };
                let allowed = ["site_a", "site_c"];
                let want: Vec<DataRow> = rows
                    .iter()
                    .filter(|r| {
                        let dag = if eav {
                            let rec = r.get("record").unwrap();
                            dags[rec.parse::<usize>().unwrap() - 1]
                        } else {
                            DAGS.iter().position(|d| Some(*d) == r.get(DAG_COLUMN)).unwrap()
                        };
                        allowed.contains(&DAGS[dag])
                    })
                    .filter(|r| keep || !eav || r.get("field_name") != Some(DAG_COLUMN))
                    .map(|r| {
                        let mut r = r.clone();
                        if !keep && !eav {
                            r.0.retain(|(k, _)| k != DAG_COLUMN);
                        }
                        r
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
