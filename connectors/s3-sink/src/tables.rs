//! The two tables (the sink's name for form-model's; their schemas are in `schemas.rs`).

/// An output table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    Form = 0,
    FormField = 1,
}

impl Table {
    pub(crate) const ALL: [Table; 2] = [Table::Form, Table::FormField];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Table::Form => form_model::FORM_TABLE,
            Table::FormField => form_model::FORM_FIELD_TABLE,
        }
    }
}

impl From<Table> for form_model::avro::Table {
    fn from(t: Table) -> Self {
        match t {
            Table::Form => Self::Form,
            Table::FormField => Self::FormField,
        }
    }
}

impl From<form_model::avro::Table> for Table {
    fn from(t: form_model::avro::Table) -> Self {
        match t {
            form_model::avro::Table::Form => Self::Form,
            form_model::avro::Table::FormField => Self::FormField,
        }
    }
}
