// Command franz-compat drives github.com/twmb/franz-go against a Kafka-protocol
// broker for compat-tests/run. Each subcommand is one step of a scenario so
// that a failing run names the step that broke:
//
//	franz-compat create-topic -bootstrap B -topic T -partitions 3
//	franz-compat produce      -bootstrap B -topic T -input lines.txt [-acks all|1] [-idempotent=false] [-stream]
//	franz-compat consume      -bootstrap B -topic T -out got.txt
//	franz-compat group-consume -bootstrap B -topic T -group G -count K -out got.txt [-all]
//
// With -stream, produce sends each line as soon as it is read (the input may be
// a FIFO that a scenario feeds in steps) and waits for every acknowledgement
// at the end of the input.
//
// Lines are "key:value"; produce sends each as one record and consume writes
// every record it reads back in the same form. Checking that each record
// arrived exactly once is the caller's job (one checker for every client).
//
// consume reads without a consumer group (direct partition consumption) from
// the start of every partition up to the end offsets listed before it began, so
// duplicates stored in the log are read back too, not only missing records.
//
// group-consume joins consumer group G (kgo.ConsumerGroup with franz-go's
// default balancers, cooperative-sticky first; the classic protocol, as KIP-848
// is opt-in), starts at the group's committed offsets (the start when there are
// none), writes exactly K records, commits the offsets of exactly those
// records (autocommit disabled; CommitRecords), reads the commits back
// (OffsetFetch) and closes, which leaves the group. With -all the committed
// offsets must also equal the end offsets.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: franz-compat create-topic|produce|consume [flags]")
		os.Exit(2)
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	bootstrap := fs.String("bootstrap", "127.0.0.1:9092", "seed broker host:port")
	topic := fs.String("topic", "", "topic name")
	partitions := fs.Int("partitions", 3, "partitions for create-topic")
	input := fs.String("input", "", "produce: file of key:value lines")
	out := fs.String("out", "", "consume: file to write key:value lines to")
	acks := fs.String("acks", "all", "produce: all or 1")
	idempotent := fs.Bool("idempotent", true, "produce: idempotent writes (franz-go's default)")
	stream := fs.Bool("stream", false, "produce: send each line as it is read")
	group := fs.String("group", "", "group-consume: consumer group id")
	count := fs.Int("count", 0, "group-consume: records to consume and commit")
	all := fs.Bool("all", false, "group-consume: committed offsets must equal end offsets")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole step")
	_ = fs.Parse(os.Args[2:])
	if *topic == "" {
		fmt.Fprintln(os.Stderr, "-topic is required")
		os.Exit(2)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(*bootstrap, ",")...),
		kgo.ClientID("franz-compat"),
		kgo.RequestTimeoutOverhead(10 * time.Second),
		kgo.RetryTimeout(30 * time.Second),
	}

	var err error
	switch cmd {
	case "create-topic":
		err = createTopic(ctx, opts, *topic, int32(*partitions))
	case "produce":
		if *stream {
			err = produceStream(ctx, opts, *topic, *input, *acks, *idempotent)
		} else {
			err = produce(ctx, opts, *topic, *input, *acks, *idempotent)
		}
	case "consume":
		err = consume(ctx, opts, *topic, *out)
	case "group-consume":
		err = groupConsume(ctx, opts, *topic, *group, *count, *out, *all)
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "franz-compat %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func createTopic(ctx context.Context, opts []kgo.Opt, topic string, partitions int32) error {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// -1: the broker's default.replication.factor (KIP-464).
	resp, err := adm.CreateTopic(ctx, partitions, -1, nil, topic)
	if err != nil {
		return fmt.Errorf("CreateTopics: %w", err)
	}
	fmt.Printf("created topic %s (id %s) with %d partitions\n", resp.Topic, resp.ID, resp.NumPartitions)
	return nil
}

func produce(ctx context.Context, opts []kgo.Opt, topic, input, acks string, idempotent bool) error {
	lines, err := readLines(input)
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(produceOpts(opts, topic, acks, idempotent)...)
	if err != nil {
		return err
	}
	defer cl.Close()

	records := make([]*kgo.Record, 0, len(lines))
	for _, line := range lines {
		key, value, _ := strings.Cut(line, ":")
		records = append(records, &kgo.Record{Key: []byte(key), Value: []byte(value)})
	}
	results := cl.ProduceSync(ctx, records...)
	perPartition := map[int32]int{}
	failed := 0
	var firstErr error
	for _, r := range results {
		if r.Err != nil {
			failed++
			if firstErr == nil {
				firstErr = r.Err
			}
			continue
		}
		perPartition[r.Record.Partition]++
	}
	fmt.Printf("produced %d records (acks=%s idempotent=%v), per partition %v, failed %d\n",
		len(records)-failed, acks, idempotent, perPartition, failed)
	if firstErr != nil {
		return fmt.Errorf("%d records failed, first error: %w", failed, firstErr)
	}
	return nil
}

func produceOpts(opts []kgo.Opt, topic, acks string, idempotent bool) []kgo.Opt {
	opts = append(opts, kgo.DefaultProduceTopic(topic))
	if acks == "1" {
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()))
	}
	if !idempotent {
		opts = append(opts, kgo.DisableIdempotentWrite())
	}
	return opts
}

func produceStream(ctx context.Context, opts []kgo.Opt, topic, input, acks string, idempotent bool) error {
	cl, err := kgo.NewClient(produceOpts(opts, topic, acks, idempotent)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	f, err := os.Open(input)
	if err != nil {
		return err
	}
	defer f.Close()
	var mu sync.Mutex
	var firstErr error
	sent, failed := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, _ := strings.Cut(sc.Text(), ":")
		sent++
		cl.Produce(ctx, &kgo.Record{Key: []byte(key), Value: []byte(value)}, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				failed++
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if err := cl.Flush(ctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("produced %d records as they were read (acks=%s idempotent=%v), failed %d\n",
		sent-failed, acks, idempotent, failed)
	if firstErr != nil {
		return fmt.Errorf("%d records failed, first error: %w", failed, firstErr)
	}
	return nil
}

func consume(ctx context.Context, opts []kgo.Opt, topic, out string) error {
	// The end offsets are the stop line: everything the log holds now.
	admCl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	ends, err := kadm.NewClient(admCl).ListEndOffsets(ctx, topic)
	admCl.Close()
	if err != nil {
		return fmt.Errorf("ListOffsets: %w", err)
	}
	if err := ends.Error(); err != nil {
		return fmt.Errorf("ListOffsets: %w", err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { want[o.Partition] = o.Offset })
	fmt.Printf("end offsets %v\n", want)

	opts = append(opts,
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	defer w.Flush()

	next := map[int32]int64{} // next offset to read per partition
	done := func() bool {
		for p, end := range want {
			if next[p] < end {
				return false
			}
		}
		return true
	}
	count := 0
	for !done() {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("consumed %d records, positions %v, wanted %v: %w", count, next, want, err)
		}
		var fetchErr error
		fetches.EachError(func(t string, p int32, err error) {
			fmt.Fprintf(os.Stderr, "fetch error %s[%d]: %v\n", t, p, err)
			if fetchErr == nil && !errors.Is(err, context.DeadlineExceeded) {
				fetchErr = err
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			fmt.Fprintf(w, "%s:%s\n", r.Key, r.Value)
			count++
			if r.Offset+1 > next[r.Partition] {
				next[r.Partition] = r.Offset + 1
			}
		})
		if fetchErr != nil {
			return fetchErr
		}
	}
	fmt.Printf("consumed %d records, positions %v\n", count, next)
	return nil
}

func groupConsume(ctx context.Context, opts []kgo.Opt, topic, group string, count int, out string, all bool) error {
	if group == "" || count <= 0 {
		return errors.New("-group and a positive -count are required")
	}
	opts = append(opts,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.SessionTimeout(10*time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			fmt.Printf("assigned %v\n", m[topic])
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			fmt.Printf("revoked %v\n", m[topic])
		}),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			cl.Close()
		}
	}()

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(f)

	var written []*kgo.Record
	for len(written) < count {
		fetches := cl.PollRecords(ctx, count-len(written))
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("consumed %d of %d records: %w", len(written), count, err)
		}
		var fetchErr error
		fetches.EachError(func(t string, p int32, err error) {
			fmt.Fprintf(os.Stderr, "fetch error %s[%d]: %v\n", t, p, err)
			if fetchErr == nil && !errors.Is(err, context.DeadlineExceeded) {
				fetchErr = err
			}
		})
		if fetchErr != nil {
			return fetchErr
		}
		fetches.EachRecord(func(r *kgo.Record) {
			fmt.Fprintf(w, "%s:%s\n", r.Key, r.Value)
			written = append(written, r)
		})
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Printf("consumed %d records as a member of %s\n", len(written), group)

	// CommitRecords commits, per partition, the offset after the last record.
	want := map[int32]int64{}
	for _, r := range written {
		if r.Offset+1 > want[r.Partition] {
			want[r.Partition] = r.Offset + 1
		}
	}
	if err := cl.CommitRecords(ctx, written...); err != nil {
		return fmt.Errorf("OffsetCommit: %w", err)
	}
	fmt.Printf("committed %v\n", want)

	adm := kadm.NewClient(cl)
	fetched, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return fmt.Errorf("OffsetFetch: %w", err)
	}
	if err := fetched.Error(); err != nil {
		return fmt.Errorf("OffsetFetch: %w", err)
	}
	got := map[int32]int64{}
	fetched.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic {
			got[o.Partition] = o.At
		}
	})
	fmt.Printf("committed offsets read back (OffsetFetch): %v\n", got)
	for p, o := range want {
		if got[p] != o {
			return fmt.Errorf("partition %d: committed %d, read back %d", p, o, got[p])
		}
	}
	if all {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
		if err != nil {
			return fmt.Errorf("ListOffsets: %w", err)
		}
		endMap := map[int32]int64{}
		ends.Each(func(o kadm.ListedOffset) { endMap[o.Partition] = o.Offset })
		fmt.Printf("end offsets %v\n", endMap)
		for p, end := range endMap {
			if c, ok := got[p]; !ok || c != end {
				return fmt.Errorf("partition %d: committed %v, end offset %d", p, got[p], end)
			}
		}
	}
	// Close leaves the group (LeaveGroup) so that a restart needs no session timeout.
	cl.Close()
	closed = true
	return nil
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}
