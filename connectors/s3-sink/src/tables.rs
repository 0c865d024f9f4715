//! The two tables, their Avro schemas, and row → Avro value conversion.

use apache_avro::Schema;
use apache_avro::types::Value;
use form_model::Row;

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

/// Schemas and conversion of both tables: form-model's `avro` feature (schemas from
/// `config/*.avsc`, compiled in).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableCodec;

impl TableCodec {
    pub(crate) fn load_default() -> anyhow::Result<Self> {
        for t in Table::ALL {
            let _ = t.model().schema();
        }
        Ok(Self)
    }

    pub(crate) fn schema(&self, table: Table) -> &'static Schema {
        table.model().schema()
    }

    /// Converts and checks a row: a column the schema lacks, a missing required column or a
    /// value of the wrong type is a mismatch naming the table and column.
    pub(crate) fn convert(
        self,
        table: Table,
        row: Row,
    ) -> Result<Value, form_model::avro::SchemaMismatch> {
        form_model::avro::row_to_value(table.model(), row)
    }
}

impl Table {
    fn model(self) -> form_model::avro::Table {
        match self {
            Table::Form => form_model::avro::Table::Form,
            Table::FormField => form_model::avro::Table::FormField,
        }
    }
}
