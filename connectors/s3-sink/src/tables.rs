//! The two tables and their Avro schemas.

use apache_avro::Schema;

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

/// The schemas of both tables: form-model's `avro` feature (from `config/*.avsc`, compiled
/// in). Rows are checked and encoded by `form_model::avro_encode`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableCodec;

impl TableCodec {
    pub(crate) fn load_default() -> anyhow::Result<Self> {
        for t in Table::ALL {
            let _ = form_model::avro::Table::from(t).schema();
        }
        Ok(Self)
    }

    pub(crate) fn schema(&self, table: Table) -> &'static Schema {
        form_model::avro::Table::from(table).schema()
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
