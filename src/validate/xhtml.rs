//! Narrative XHTML (`Narrative.div`, type `xhtml`): well-formed XML, a `div` root in the
//! XHTML namespace, only the basic formatting elements and attributes FHIR allows (HTML 4.0
//! chapters 7-11 and 15, links, images; no scripts, forms, frames or event handlers), only
//! XML's own entities, and some content (R4 constraints txt-1, txt-2 and the Narrative
//! datatype rules).

/// Elements FHIR narrative may use.
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
    "s",
    "strike",
    "u",
    "center",
    "font",
];

/// Attributes FHIR narrative may use (event handlers such as `onclick` never).
const ATTRIBUTES: &[&str] = &[
    "abbr",
    "accesskey",
    "align",
    "alt",
    "axis",
    "bgcolor",
    "border",
    "cellpadding",
    "cellspacing",
    "char",
    "charoff",
    "charset",
    "cite",
    "class",
    "color",
    "colspan",
    "compact",
    "coords",
    "datetime",
    "dir",
    "face",
    "frame",
    "headers",
    "height",
    "href",
    "hreflang",
    "hspace",
    "id",
    "lang",
    "name",
    "nowrap",
    "rel",
    "rev",
    "rowspan",
    "rules",
    "scope",
    "shape",
    "size",
    "span",
    "src",
    "start",
    "style",
    "summary",
    "tabindex",
    "title",
    "type",
    "valign",
    "value",
    "vspace",
    "width",
    "xml:lang",
    "xmlns",
];

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// Checks a narrative `div`; returns the problems found (empty when it is acceptable).
pub fn check(text: &str) -> Vec<String> {
    let mut p = Reader {
        s: text.as_bytes(),
        text,
        pos: 0,
        problems: Vec::new(),
        content: false,
    };
    p.document();
    if p.problems.is_empty() && !p.content {
        p.problems.push(
            "the narrative has no content (txt-2: it SHALL have some non-whitespace content)"
                .into(),
        );
    }
    p.problems
}

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    problems: Vec<String>,
    content: bool,
}

impl Reader<'_> {
    fn fail(&mut self, msg: String) {
        if self.problems.len() < 10 {
            self.problems.push(msg);
        }
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn document(&mut self) {
        self.skip_ws();
        if self.text[self.pos..].starts_with("<?xml") {
            match self.text[self.pos..].find("?>") {
                Some(end) => self.pos += end + 2,
                None => return self.fail("unterminated XML declaration".into()),
            }
            self.skip_ws();
        }
        if self.s.get(self.pos) != Some(&b'<') {
            return self.fail("the narrative must start with a <div> element".into());
        }
        let Some(root) = self.element(0) else { return };
        if root.0 != "div" {
            self.fail(format!(
                "the narrative root element must be <div>, not <{}>",
                root.0
            ));
        }
        if root.1.as_deref() != Some(XHTML_NS) {
            self.fail(format!(
                "the narrative <div> must be in the XHTML namespace ({XHTML_NS})"
            ));
        }
        self.skip_ws();
        if self.pos < self.s.len() {
            self.fail("content after the end of the narrative <div>".into());
        }
    }

    /// Reads an element at `<`; returns its name and xmlns attribute.
    fn element(&mut self, depth: usize) -> Option<(String, Option<String>)> {
        if depth > 100 {
            self.fail("the XHTML is nested too deeply".into());
            return None;
        }
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            self.fail("malformed XHTML: element name expected after '<'".into());
            return None;
        }
        if !ELEMENTS.contains(&name.as_str()) {
            self.fail(format!("invalid element name in the XHTML ('{name}')"));
        }
        if name == "img" {
            self.content = true;
        }
        let mut xmlns = None;
        loop {
            self.skip_ws();
            match self.s.get(self.pos) {
                Some(b'/') if self.s.get(self.pos + 1) == Some(&b'>') => {
                    self.pos += 2;
                    return Some((name, xmlns));
                }
                Some(b'>') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => {
                    let attr = self.name();
                    if attr.is_empty() {
                        self.fail(format!("malformed XHTML in the attributes of <{name}>"));
                        return None;
                    }
                    self.skip_ws();
                    if self.s.get(self.pos) != Some(&b'=') {
                        self.fail(format!("malformed XHTML: attribute '{attr}' has no value"));
                        return None;
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let value = self.quoted()?;
                    let lower = attr.to_ascii_lowercase();
                    if lower.starts_with("on")
                        || !ATTRIBUTES.contains(&attr.as_str()) && !attr.starts_with("xmlns:")
                    {
                        self.fail(format!(
                            "invalid attribute name in the XHTML ('{attr}' on <{name}>)"
                        ));
                    }
                    if (lower == "href" || lower == "src")
                        && value
                            .trim_start()
                            .to_ascii_lowercase()
                            .starts_with("javascript:")
                    {
                        self.fail(format!("script in the '{attr}' attribute of <{name}>"));
                    }
                    if attr == "xmlns" {
                        xmlns = Some(value);
                    }
                }
                None => {
                    self.fail(format!("unterminated start tag <{name}>"));
                    return None;
                }
            }
        }
        // Content until the matching end tag.
        loop {
            match self.s.get(self.pos) {
                None => {
                    self.fail(format!("element <{name}> is not closed"));
                    return None;
                }
                Some(b'<') => {
                    let rest = &self.text[self.pos..];
                    if let Some(close) = rest.strip_prefix("</") {
                        let end = close.find('>').unwrap_or(close.len());
                        let closing = close[..end].trim();
                        if closing != name {
                            self.fail(format!("malformed XHTML: </{closing}> closes <{name}>"));
                            return None;
                        }
                        self.pos += 2 + end + 1;
                        return Some((name, xmlns));
                    } else if rest.starts_with("<!--") {
                        match rest.find("-->") {
                            Some(e) => self.pos += e + 3,
                            None => {
                                self.fail("unterminated comment in the XHTML".into());
                                return None;
                            }
                        }
                    } else if rest.starts_with("<![CDATA[") {
                        match rest.find("]]>") {
                            Some(e) => {
                                if !rest[9..e].trim().is_empty() {
                                    self.content = true;
                                }
                                self.pos += e + 3;
                            }
                            None => {
                                self.fail("unterminated CDATA section in the XHTML".into());
                                return None;
                            }
                        }
                    } else {
                        self.element(depth + 1)?;
                    }
                }
                Some(b'&') => self.entity(),
                Some(c) => {
                    if !c.is_ascii_whitespace() {
                        self.content = true;
                    }
                    self.pos += 1;
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b':' | b'.'))
        {
            self.pos += 1;
        }
        self.text[start..self.pos].to_string()
    }

    fn quoted(&mut self) -> Option<String> {
        let q = *self.s.get(self.pos)?;
        if q != b'"' && q != b'\'' {
            self.fail("malformed XHTML: attribute values must be quoted".into());
            return None;
        }
        self.pos += 1;
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(|&c| c != q) {
            if self.s[self.pos] == b'&' {
                self.entity();
                continue;
            }
            self.pos += 1;
        }
        let value = self.text.get(start..self.pos)?.to_string();
        self.pos += 1;
        Some(value)
    }

    /// An entity reference: only XML's five and numeric references exist without a DTD.
    fn entity(&mut self) {
        let rest = &self.text[self.pos..];
        let Some(end) = rest.find(';').filter(|&e| e < 12) else {
            self.fail("malformed XHTML: '&' must start an entity reference ending in ';'".into());
            self.pos += 1;
            return;
        };
        let ent = &rest[1..end];
        let ok = matches!(ent, "lt" | "gt" | "amp" | "quot" | "apos")
            || ent
                .strip_prefix("#x")
                .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
            || ent
                .strip_prefix('#')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            self.fail(format!("invalid entity in the XHTML ('&{ent};')"));
        }
        self.content = true;
        self.pos += end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn narrative_rules() {
        let ok = r##"<div xmlns="http://www.w3.org/1999/xhtml"><p>Ablation of <b>segment VI</b> &amp; VII</p><img src="#x" alt="x"/></div>"##;
        assert_eq!(check(ok), Vec::<String>::new());
        let bad = [
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><script>x</script></div>"#,
                "invalid element name in the XHTML ('script')",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">a</p></div>"#,
                "invalid attribute name",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml">&reg;</div>"#,
                "invalid entity in the XHTML ('&reg;')",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>a</div>"#,
                "closes <p>",
            ),
            (r#"<div>text</div>"#, "XHTML namespace"),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml">  </div>"#,
                "no content",
            ),
            (
                r#"<p xmlns="http://www.w3.org/1999/xhtml">x</p>"#,
                "root element must be <div>",
            ),
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:alert(1)">x</a></div>"#,
                "script in the 'href'",
            ),
        ];
        for (text, want) in bad {
            let problems = check(text);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{text}: {problems:?}"
            );
        }
    }
}
