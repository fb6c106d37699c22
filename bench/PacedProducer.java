// The live phase of the benchmark: publishes pre-generated bus records (JSON lines from
// `coinstream generate --format record --out F`) to a Kafka topic at a fixed rate, and logs the
// moment each one was handed to the producer, for the end-to-end latency of the engine under test.
//
//   java -cp '<kafka jars>/*' bench/PacedProducer.java BROKERS TOPIC RECORDS_FILE RATE SECONDS LOG
//
// Runs as a single-file source program (JDK 11+) on the kafka-clients jar that scripts/services.sh
// already resolved. Records are keyed by symbol (as coinstream generate does), acks=all,
// linger.ms=1. LOG gets one line per record: symbol,trade_id,send time in µs since the epoch.
// Sends are paced against the clock (record i goes at start + i/RATE), so a slow send is caught up
// on rather than lowering the rate.

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class PacedProducer {
    private static final Pattern SYMBOL = Pattern.compile("\"symbol\"\\s*:\\s*\"([^\"]+)\"");
    private static final Pattern TRADE_ID = Pattern.compile("\"trade_id\"\\s*:\\s*(\\d+)");

    public static void main(String[] args) throws Exception {
        if (args.length != 6) {
            System.err.println("usage: PacedProducer BROKERS TOPIC RECORDS_FILE RATE SECONDS LOG");
            System.exit(2);
        }
        String brokers = args[0], topic = args[1];
        double rate = Double.parseDouble(args[3]);
        double seconds = Double.parseDouble(args[4]);
        long count = (long) (rate * seconds);

        List<String[]> records = new ArrayList<>();
        try (BufferedReader in = Files.newBufferedReader(Paths.get(args[2]), StandardCharsets.UTF_8)) {
            String line;
            while ((line = in.readLine()) != null && records.size() < count) {
                if (line.isBlank()) continue;
                Matcher s = SYMBOL.matcher(line), t = TRADE_ID.matcher(line);
                if (!s.find() || !t.find()) throw new IllegalArgumentException("not a bus record: " + line);
                records.add(new String[] {s.group(1), t.group(1), line});
            }
        }
        if (records.size() < count) {
            throw new IllegalArgumentException(args[2] + " has " + records.size() + " records, need " + count);
        }

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "1");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        long[] sentMicros = new long[records.size()];
        AtomicLong failed = new AtomicLong();
        long behindMax = 0;
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props)) {
            producer.partitionsFor(topic); // metadata before the clock starts
            long start = System.nanoTime();
            for (int i = 0; i < records.size(); i++) {
                long due = start + (long) (i * 1e9 / rate);
                long wait = due - System.nanoTime();
                if (wait > 0) LockSupport.parkNanos(wait);
                else behindMax = Math.max(behindMax, -wait);
                String[] r = records.get(i);
                Instant now = Instant.now();
                sentMicros[i] = now.getEpochSecond() * 1_000_000L + now.getNano() / 1_000;
                producer.send(
                        new ProducerRecord<>(topic, r[0], r[2].getBytes(StandardCharsets.UTF_8)),
                        (meta, e) -> {
                            if (e != null) failed.incrementAndGet();
                        });
            }
            producer.flush();
            double took = (System.nanoTime() - start) / 1e9;
            System.err.printf(
                    "paced producer: %d records in %.2f s (%.0f/s), at most %.1f ms behind schedule, %d failed%n",
                    records.size(), took, records.size() / took, behindMax / 1e6, failed.get());
            producer.close(java.time.Duration.ofSeconds(30));
        }
        try (BufferedWriter out = Files.newBufferedWriter(Paths.get(args[5]), StandardCharsets.UTF_8)) {
            for (int i = 0; i < records.size(); i++) {
                String[] r = records.get(i);
                out.write(r[0] + "," + r[1] + "," + sentMicros[i] + "\n");
            }
        }
        System.exit(failed.get() == 0 ? 0 : 1);
    }
}
