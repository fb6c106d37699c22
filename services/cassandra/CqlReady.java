// Readiness probe for scripts/services.sh: exits 0 once the node answers
// `SELECT release_version FROM system.local` over CQL. Uses the 3.x driver that
// cassandra-all already depends on (shaded), so no extra download is needed.
//
// Usage: java -cp '<cassandra jars>/*:<classes>' CqlReady <host> <port> <timeout_ms>
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.SocketOptions;

public final class CqlReady {
    public static void main(String[] args) {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        int timeoutMs = Integer.parseInt(args[2]);
        Cluster cluster = Cluster.builder()
            .addContactPoint(host)
            .withPort(port)
            .withoutJMXReporting()
            .withoutMetrics()
            .withSocketOptions(new SocketOptions()
                .setConnectTimeoutMillis(timeoutMs)
                .setReadTimeoutMillis(timeoutMs))
            .build();
        try {
            Session session = cluster.connect();
            Row row = session.execute("SELECT release_version FROM system.local").one();
            System.out.println("cassandra: release_version " + row.getString("release_version"));
        } catch (RuntimeException e) {
            System.err.println("cassandra: not ready: " + e);
            System.exit(1);
        }
        // No graceful Cluster.close(): it waits seconds for Netty's quiet period, and the
        // server copes with a dropped connection.
        System.exit(0);
    }
}
