// Readiness probe for scripts/services.sh: exits 0 once the broker answers a metadata
// request and lists itself. An open port is not enough: the socket accepts connections
// before the KRaft controller has elected itself and the broker has registered.
//
// With --secure it also makes sure the SCRAM-SHA-512 user exists (an upsert over the plain
// listener, so it is the same on a fresh and on an already formatted broker), then asks again
// through the SASL_SSL listener as that user, verifying the broker against the CA: the secure
// listener is ready only when a real client can log in. The password and the truststore's
// password come from the environment (SCRAM_PASSWORD, STORE_PASSWORD), never the command line,
// which `ps` shows to every user.
//
// Usage: java -cp '<kafka jars>/*:<classes>' KafkaReady <bootstrap> <timeout_ms>
//            [--secure <secure bootstrap> <user> <truststore.p12>]
import java.util.Collection;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.Node;

public final class KafkaReady {
    public static void main(String[] args) {
        String bootstrap = args[0];
        int timeoutMs = Integer.parseInt(args[1]);
        boolean secure = args.length == 6 && args[2].equals("--secure");
        try {
            try (Admin admin = Admin.create(props(bootstrap, timeoutMs))) {
                describe("kafka", admin, timeoutMs);
                if (!secure) {
                    return;
                }
                String password = System.getenv("SCRAM_PASSWORD");
                admin.alterUserScramCredentials(List.of(new UserScramCredentialUpsertion(
                        args[4],
                        new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                        password)))
                    .all().get(timeoutMs, TimeUnit.MILLISECONDS);
            }
            Properties props = props(args[3], timeoutMs);
            props.put("security.protocol", "SASL_SSL");
            props.put("sasl.mechanism", "SCRAM-SHA-512");
            props.put("sasl.jaas.config",
                "org.apache.kafka.common.security.scram.ScramLoginModule required username=\""
                    + args[4] + "\" password=\"" + System.getenv("SCRAM_PASSWORD") + "\";");
            props.put("ssl.truststore.type", "PKCS12");
            props.put("ssl.truststore.location", args[5]);
            props.put("ssl.truststore.password", System.getenv("STORE_PASSWORD"));
            try (Admin admin = Admin.create(props)) {
                describe("kafka SASL_SSL " + args[3] + " as " + args[4], admin, timeoutMs);
            }
        } catch (Exception e) {
            System.err.println("kafka: not ready: " + e);
            System.exit(1);
        }
    }

    private static Properties props(String bootstrap, int timeoutMs) {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, timeoutMs);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 200);
        return props;
    }

    private static void describe(String what, Admin admin, int timeoutMs) throws Exception {
        Collection<Node> nodes =
            admin.describeCluster().nodes().get(timeoutMs, TimeUnit.MILLISECONDS);
        if (nodes.isEmpty()) {
            throw new IllegalStateException(what + ": metadata lists no broker yet");
        }
        System.out.println(what + ": brokers " + nodes);
    }
}
