// Writes records to a Kafka topic as other clients do (the Java producer), for the tests of the
// Kafka source against real topics.
//
//   java -cp '<kafka jars>/*' tests/java/TopicWriter.java BROKERS TOPIC COMPRESSION [TRANSACTIONAL_ID] < lines
//
// Runs as a single-file source program (JDK 11+) on the kafka-clients jar that
// scripts/services.sh resolved (with lz4-java, snappy-java and zstd-jni next to it).
// COMPRESSION is the producer's compression.type: none, gzip, snappy, lz4 or zstd.
// Each input line is `PARTITION|KEY|VALUE` (PARTITION empty: the key decides). With a
// TRANSACTIONAL_ID the producer is transactional: records go into an open transaction, a line
// `--commit` commits it and `--abort` aborts it (their records must never be read by a
// read_committed consumer); an open transaction is committed at the end of the input. Without one,
// `--commit`/`--abort` lines only flush. Prints `sent N` when every send was acknowledged.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Properties;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public class TopicWriter {
    public static void main(String[] args) throws Exception {
        if (args.length < 3 || args.length > 4) {
            System.err.println("usage: TopicWriter BROKERS TOPIC COMPRESSION [TRANSACTIONAL_ID] < lines");
            System.exit(2);
        }
        String topic = args[1];
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, args[2]);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        boolean transactional = args.length == 4;
        if (transactional) {
            props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, args[3]);
        }
        long sent = 0;
        // Sends are batched (and so compressed together); the first failure fails the run.
        Exception[] failure = new Exception[1];
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            if (transactional) {
                producer.initTransactions();
            }
            boolean open = false;
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isEmpty()) {
                    continue;
                }
                if (line.equals("--commit") || line.equals("--abort")) {
                    producer.flush();
                    if (transactional && open) {
                        if (line.equals("--commit")) {
                            producer.commitTransaction();
                        } else {
                            producer.abortTransaction();
                        }
                        open = false;
                    }
                    continue;
                }
                String[] parts = line.split("\\|", 3);
                if (parts.length != 3) {
                    throw new IllegalArgumentException("expected PARTITION|KEY|VALUE: " + line);
                }
                if (transactional && !open) {
                    producer.beginTransaction();
                    open = true;
                }
                Integer partition = parts[0].isEmpty() ? null : Integer.valueOf(parts[0]);
                producer.send(new ProducerRecord<>(topic, partition, parts[1], parts[2]), (meta, e) -> {
                    if (e != null) {
                        failure[0] = e;
                    }
                });
                sent++;
            }
            if (transactional && open) {
                producer.commitTransaction();
            }
            producer.flush();
        }
        if (failure[0] != null) {
            throw failure[0];
        }
        System.out.println("sent " + sent);
    }
}
