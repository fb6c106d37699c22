// Readiness probe for scripts/services.sh: exits 0 once the node answers
// `SELECT release_version FROM system.local` over CQL. Uses the 3.x driver that
// cassandra-all already depends on (shaded), so no extra download is needed.
//
// With --secure (the cassandra-secure node) it connects over TLS, verifying the node against
// the CA in the truststore, and logs in as <user>. When that login is refused and the node
// still has its built-in superuser (cassandra/cassandra, created at first start), it creates
// <user> as a login superuser with that password first: the node is a throwaway test server,
// and the application's role is what every test uses. The passwords come from the
// environment (CQL_PASSWORD, STORE_PASSWORD), never the command line.
//
// Usage: java -cp '<cassandra jars>/*:<classes>' CqlReady <host> <port> <timeout_ms>
//            [--secure <user> <truststore.p12>]
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.RemoteEndpointAwareJdkSSLOptions;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.SocketOptions;
import com.datastax.driver.core.exceptions.AuthenticationException;
import java.io.FileInputStream;
import java.security.KeyStore;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public final class CqlReady {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        int timeoutMs = Integer.parseInt(args[2]);
        boolean secure = args.length == 6 && args[3].equals("--secure");
        try {
            if (!secure) {
                query(cluster(host, port, timeoutMs, null, null, null));
            } else {
                String user = args[4];
                String password = System.getenv("CQL_PASSWORD");
                SSLContext tls = tls(args[5], System.getenv("STORE_PASSWORD"));
                try {
                    query(cluster(host, port, timeoutMs, tls, user, password));
                } catch (AuthenticationException e) {
                    Session admin =
                        cluster(host, port, timeoutMs, tls, "cassandra", "cassandra").connect();
                    admin.execute("CREATE ROLE IF NOT EXISTS \"" + user + "\" WITH PASSWORD = '"
                        + password.replace("'", "''") + "' AND LOGIN = true AND SUPERUSER = true");
                    System.out.println("cassandra: created role " + user);
                    query(cluster(host, port, timeoutMs, tls, user, password));
                }
            }
        } catch (RuntimeException e) {
            System.err.println("cassandra: not ready: " + e);
            System.exit(1);
        }
        // No graceful Cluster.close(): it waits seconds for Netty's quiet period, and the
        // server copes with a dropped connection.
        System.exit(0);
    }

    private static Cluster cluster(String host, int port, int timeoutMs, SSLContext tls,
            String user, String password) {
        Cluster.Builder b = Cluster.builder()
            .addContactPoint(host)
            .withPort(port)
            .withoutJMXReporting()
            .withoutMetrics()
            .withSocketOptions(new SocketOptions()
                .setConnectTimeoutMillis(timeoutMs)
                .setReadTimeoutMillis(timeoutMs));
        if (tls != null) {
            b = b.withSSL(RemoteEndpointAwareJdkSSLOptions.builder().withSSLContext(tls).build());
        }
        if (user != null) {
            b = b.withCredentials(user, password);
        }
        return b.build();
    }

    private static void query(Cluster cluster) {
        Session session = cluster.connect();
        Row row = session.execute("SELECT release_version FROM system.local").one();
        System.out.println("cassandra: release_version " + row.getString("release_version"));
    }

    private static SSLContext tls(String truststore, String password) throws Exception {
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(truststore)) {
            ks.load(in, password.toCharArray());
        }
        TrustManagerFactory tmf =
            TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ks);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }
}
