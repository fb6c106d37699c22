//! The CQL statement text of the Cassandra sink: the keyspace and table DDL, the INSERT every
//! row is bound to, and where the primary key columns are among the bound values. Identifiers are
//! always quoted ([`quote`]).

use super::config::{Replication, Settings};
use super::types::quote;

impl Settings {
    /// `keyspace.table`, quoted.
    pub fn qualified_table(&self) -> String {
        format!(
            "{}.{}",
            quote(&self.config.keyspace),
            quote(&self.config.table)
        )
    }

    /// `CREATE KEYSPACE IF NOT EXISTS …` with the configured replication.
    pub fn create_keyspace_cql(&self) -> String {
        let replication = match &self.config.replication {
            Replication::Simple { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopology { datacenters } => {
                let dcs: Vec<String> = datacenters
                    .iter()
                    .map(|(dc, n)| format!("'{}': {n}", dc.replace('\'', "''")))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        };
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {replication}",
            quote(&self.config.keyspace)
        )
    }

    /// `CREATE TABLE IF NOT EXISTS …` with the transform's columns and the configured key.
    pub fn create_table_cql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", quote(&c.name), c.cql.cql_name()))
            .collect();
        let partition: Vec<String> = self.config.partition_key.iter().map(|c| quote(c)).collect();
        let mut key = vec![format!("({})", partition.join(", "))];
        key.extend(self.config.clustering_key.iter().map(|c| quote(c)));
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.qualified_table(),
            parts.join(", ")
        )
    }

    /// The INSERT every row is bound to, its columns in the transform's order.
    pub fn insert_cql(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| quote(&c.name)).collect();
        let markers = vec!["?"; names.len()].join(", ");
        let ttl = self
            .config
            .ttl_secs
            .map(|t| format!(" USING TTL {}", t.secs()))
            .unwrap_or_default();
        format!(
            "INSERT INTO {} ({}) VALUES ({markers}){ttl}",
            self.qualified_table(),
            names.join(", ")
        )
    }

    /// The index, in [`Settings::columns`], of every partition key column, in key order.
    pub fn partition_key_indices(&self) -> Vec<usize> {
        self.indices_of(&self.config.partition_key)
    }

    /// The index, in [`Settings::columns`], of every primary key column.
    pub fn key_column_indices(&self) -> Vec<usize> {
        self.indices_of(
            self.config
                .partition_key
                .iter()
                .chain(&self.config.clustering_key),
        )
    }

    fn indices_of<'n>(&self, names: impl IntoIterator<Item = &'n String>) -> Vec<usize> {
        names
            .into_iter()
            .filter_map(|k| self.columns.iter().position(|c| &c.name == k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use scylla::statement::Consistency;

    use super::super::config::tests::{parse, profit_schema};

    #[test]
    fn defaults_give_the_documented_statements() {
        let config = parse(r#"{"contact_points": ["127.0.0.1:9042"]}"#).unwrap();
        let settings = config.validate(&profit_schema()).unwrap();
        assert_eq!(settings.consistency, Consistency::LocalQuorum);
        assert_eq!(settings.config.max_in_flight.get(), 256);
        assert_eq!(settings.config.batch_size_rows.get(), 128);
        assert_eq!(
            settings.create_keyspace_cql(),
            "CREATE KEYSPACE IF NOT EXISTS \"crypto_keyspace\" WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            settings.create_table_cql(),
            "CREATE TABLE IF NOT EXISTS \"crypto_keyspace\".\"crypto_trades\" (\"symbol\" text, \
             \"coin_name\" text, \"trade_id\" bigint, \"trade_time\" timestamp, \"trade_date\" date, \
             \"price\" decimal, \"size\" decimal, \"side\" text, \"profit\" decimal, \
             PRIMARY KEY ((\"symbol\", \"trade_date\"), \"trade_time\", \"trade_id\"))"
        );
        assert_eq!(
            settings.insert_cql(),
            "INSERT INTO \"crypto_keyspace\".\"crypto_trades\" (\"symbol\", \"coin_name\", \
             \"trade_id\", \"trade_time\", \"trade_date\", \"price\", \"size\", \"side\", \
             \"profit\") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        assert_eq!(settings.key_column_indices(), vec![0, 4, 3, 2]);
    }

    #[test]
    fn network_topology_and_ttl() {
        let config = parse(
            r#"{"replication": {"strategy": "network_topology", "datacenters": {"dc1": 3, "dc2": 2}},
                "ttl_secs": 3600, "consistency": "each_quorum"}"#,
        )
        .unwrap();
        let settings = config.validate(&profit_schema()).unwrap();
        assert_eq!(
            settings.create_keyspace_cql(),
            "CREATE KEYSPACE IF NOT EXISTS \"crypto_keyspace\" WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
        );
        assert!(settings.insert_cql().ends_with(" USING TTL 3600"));
        assert_eq!(settings.consistency, Consistency::EachQuorum);
    }
}
