// Readiness probe for scripts/services.sh: exits 0 once the broker answers a metadata
// request and lists itself. An open port is not enough: the socket accepts connections
// before the KRaft controller has elected itself and the broker has registered.
//
// Usage: java -cp '<kafka jars>/*:<classes>' KafkaReady <bootstrap> <timeout_ms>
import java.util.Collection;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.Node;

public final class KafkaReady {
    public static void main(String[] args) {
        String bootstrap = args[0];
        int timeoutMs = Integer.parseInt(args[1]);
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, timeoutMs);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        props.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 200);
        try (Admin admin = Admin.create(props)) {
            Collection<Node> nodes =
                admin.describeCluster().nodes().get(timeoutMs, TimeUnit.MILLISECONDS);
            if (nodes.isEmpty()) {
                System.err.println("kafka: metadata lists no broker yet");
                System.exit(1);
            }
            System.out.println("kafka: brokers " + nodes);
        } catch (Exception e) {
            System.err.println("kafka: not ready: " + e);
            System.exit(1);
        }
    }
}
