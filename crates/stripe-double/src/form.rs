//! Stripe's form encoding: `application/x-www-form-urlencoded` bodies whose keys use
//! bracket syntax for nesting (`metadata[saga_id]=…`, `expand[0]=…`, `expand[]=…`).

use std::collections::BTreeMap;

/// A decoded parameter value: a string, a map (`a[b]=…`) or a list (`a[0]=…`, `a[]=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Map(BTreeMap<String, Value>),
    List(Vec<Value>),
}

/// The decoded parameters of one request, plus the raw pairs in a canonical order
/// (used to compare the parameters of two requests sharing an idempotency key).
#[derive(Debug, Clone, Default)]
pub struct Params {
    top: BTreeMap<String, Value>,
    canonical: Vec<(String, String)>,
}

/// Malformed bracket syntax, reported as Stripe's `parameter_invalid` style error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError {
    pub param: String,
    pub message: String,
}

impl Params {
    /// Decodes a form body (or a query string).
    pub fn parse(raw: &[u8]) -> Result<Self, FormError> {
        let mut top: BTreeMap<String, Node> = BTreeMap::new();
        let mut canonical = Vec::new();
        for (key, value) in form_urlencoded::parse(raw) {
            let key = key.into_owned();
            let value = value.into_owned();
            let path = split_key(&key)?;
            let (head, rest) = path.split_first().ok_or_else(|| FormError {
                param: key.clone(),
                message: "Empty parameter name".to_owned(),
            })?;
            let node = top.entry(head.clone()).or_insert_with(Node::empty);
            node.insert(rest, value.clone(), &key)?;
            canonical.push((key, value));
        }
        canonical.sort();
        let top = top
            .into_iter()
            .map(|(k, node)| (k, node.into_value()))
            .collect();
        Ok(Self { top, canonical })
    }

    /// Top-level parameter names, for `parameter_unknown` checks.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.top.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.top.get(name)
    }

    /// A top-level scalar parameter.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.top.get(name) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A top-level map of strings (`metadata[k]=v`); nested values are ignored.
    pub fn string_map(&self, name: &str) -> BTreeMap<String, String> {
        match self.top.get(name) {
            Some(Value::Map(m)) => m
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Str(s) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// A top-level list of strings (`a[0]=x`, `a[]=x`; a single `a=x` counts as one item).
    pub fn string_list(&self, name: &str) -> Option<Vec<String>> {
        match self.top.get(name)? {
            Value::Str(s) => Some(vec![s.clone()]),
            Value::List(items) => Some(
                items
                    .iter()
                    .filter_map(|v| match v {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            Value::Map(_) => None,
        }
    }

    /// The decoded pairs sorted, so `a=1&b=2` and `b=2&a=1` compare equal.
    pub fn canonical(&self) -> &[(String, String)] {
        &self.canonical
    }
}

/// `a[b][0]` → `["a", "b", "0"]`; `a[]` → `["a", ""]`.
fn split_key(key: &str) -> Result<Vec<String>, FormError> {
    let invalid = || FormError {
        param: key.to_owned(),
        message: format!("Invalid parameter name: {key}"),
    };
    let Some(open) = key.find('[') else {
        return Ok(vec![key.to_owned()]);
    };
    let mut path = vec![key[..open].to_owned()];
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(invalid)?;
        let close = inner.find(']').ok_or_else(invalid)?;
        path.push(inner[..close].to_owned());
        rest = &inner[close + 1..];
    }
    Ok(path)
}

/// Intermediate tree: a leaf, or children keyed by the bracket segment.
#[derive(Debug)]
enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

impl Node {
    fn empty() -> Self {
        Node::Branch(BTreeMap::new())
    }

    fn insert(&mut self, path: &[String], value: String, full_key: &str) -> Result<(), FormError> {
        let conflict = || FormError {
            param: full_key.to_owned(),
            message: format!("Conflicting values for parameter: {full_key}"),
        };
        match path.split_first() {
            None => match self {
                Node::Branch(children) if children.is_empty() => {
                    *self = Node::Leaf(value);
                    Ok(())
                }
                // Stripe keeps the last value of a repeated scalar.
                Node::Leaf(old) => {
                    *old = value;
                    Ok(())
                }
                Node::Branch(_) => Err(conflict()),
            },
            Some((segment, rest)) => {
                let Node::Branch(children) = self else {
                    return Err(conflict());
                };
                let segment = if segment.is_empty() {
                    // `a[]`: append as the next list index.
                    children.len().to_string()
                } else {
                    segment.clone()
                };
                children
                    .entry(segment)
                    .or_insert_with(Node::empty)
                    .insert(rest, value, full_key)
            }
        }
    }

    fn into_value(self) -> Value {
        match self {
            Node::Leaf(s) => Value::Str(s),
            Node::Branch(children) => {
                let all_indexes = !children.is_empty()
                    && children
                        .keys()
                        .all(|k| k.bytes().all(|b| b.is_ascii_digit()));
                if all_indexes {
                    let mut indexed: Vec<(u64, Node)> = children
                        .into_iter()
                        .map(|(k, n)| (k.parse().unwrap_or(u64::MAX), n))
                        .collect();
                    indexed.sort_by_key(|(i, _)| *i);
                    Value::List(indexed.into_iter().map(|(_, n)| n.into_value()).collect())
                } else {
                    Value::Map(
                        children
                            .into_iter()
                            .map(|(k, n)| (k, n.into_value()))
                            .collect(),
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_brackets_lists_and_maps() {
        let raw = b"amount=2000&currency=usd&metadata%5Bsaga_id%5D=s1&metadata[step]=authorize\
                    &payment_method_types[0]=card&expand[]=latest_charge&expand[]=customer";
        let p = Params::parse(raw).unwrap();
        assert_eq!(p.str("amount"), Some("2000"));
        assert_eq!(
            p.string_map("metadata").get("saga_id").map(String::as_str),
            Some("s1")
        );
        assert_eq!(p.string_map("metadata").len(), 2);
        assert_eq!(
            p.string_list("payment_method_types"),
            Some(vec!["card".to_owned()])
        );
        assert_eq!(
            p.string_list("expand"),
            Some(vec!["latest_charge".to_owned(), "customer".to_owned()])
        );
    }

    #[test]
    fn canonical_order_ignores_pair_order() {
        let a = Params::parse(b"a=1&b=2").unwrap();
        let b = Params::parse(b"b=2&a=1").unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn rejects_broken_brackets_and_conflicts() {
        assert!(Params::parse(b"metadata[a=1").is_err());
        assert!(Params::parse(b"a=1&a[b]=2").is_err());
    }
}
