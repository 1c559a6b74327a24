# cython: language_level=3
"""The load generator of `python -m bench`: raw non-blocking sockets on one epoll loop.

Invariants:
- The hot path (frame building, masking, sending, receiving, parsing, counting, latency
  recording) touches only C memory: per-connection buffers, counters and histograms. Python
  objects appear only at setup, at the two measurement-window boundaries (the `snapshot`
  callback) and in the result.
- Every client frame is an RFC 6455 masked frame with a fresh mask key.
- Every benchmark message carries its send time (CLOCK_MONOTONIC, ns) and a per-sender counter
  in its `id` ("<ns>.<counter>"); latency is receive time minus that, on the same clock.
- Only what happens inside the measured window [w0, w1) is counted in the window figures.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdlib cimport malloc, realloc, free, calloc
from libc.string cimport memcpy, memmove, memcmp, memset, strlen
from libc.errno cimport errno, EAGAIN, EINTR

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK
    int EINPROGRESS
from libc.stdio cimport snprintf
from libc.stdint cimport uint8_t, int32_t, uint32_t, uint64_t, int64_t

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil

cdef extern from "<string.h>" nogil:
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t n)
    int close(int fd)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t len)
    int bind(int fd, const sockaddr* addr, socklen_t len)
    int listen(int fd, int backlog)
    int accept4(int fd, sockaddr* addr, socklen_t* len, int flags)
    int getsockname(int fd, sockaddr* addr, socklen_t* len)
    int SO_REUSEADDR
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t len)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* len)
    int AF_INET, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR, SO_LINGER
    int MSG_NOSIGNAL
    struct linger:
        int l_onoff
        int l_linger

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    int IPPROTO_TCP
    int IPPROTO_IP
    unsigned short htons(unsigned short)
    uint32_t htonl(uint32_t)
    unsigned short ntohs(unsigned short)

cdef extern from *:
    """
    #include <netinet/in.h>
    #ifndef IP_BIND_ADDRESS_NO_PORT
    #define IP_BIND_ADDRESS_NO_PORT 24
    #endif
    """
    int IP_BIND_ADDRESS_NO_PORT

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* ev)
    int epoll_wait(int epfd, epoll_event* evs, int maxevents, int timeout) nogil
    int EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
    uint32_t EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP

cdef extern from "<sys/timerfd.h>" nogil:
    struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_create(int clk, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec* new, itimerspec* old)
    int TFD_NONBLOCK, TFD_CLOEXEC


cdef enum:
    # connection states
    CS_FREE = 0
    CS_CONNECTING = 1
    CS_HANDSHAKE = 2
    CS_AUTHING = 3
    CS_READY = 4
    CS_CLOSED = 5

cdef enum:
    M_CLOSED = 0   # closed loop: each sender keeps `window` messages in flight to its partner
    M_OPEN = 1     # open loop: messages at a fixed total rate, round-robin over senders
    M_FANOUT = 2   # client 0 sends to a group of every client, `window` messages in flight
    M_IDLE = 3     # connect and authenticate, then stay idle
    M_STORM = 4    # connect each client at its scheduled time; count its backlog arriving

cdef enum:
    # log-linear latency buckets: 1 us wide below 1024 us, then 512 per power of two
    # (0.2% wide) up to 2**36 us; beyond that the overflow count
    HIST_LINEAR = 1024
    HIST_SUB = 512
    HIST_BUCKETS = 1024 + 27 * 512
    RING = 8192               # fan-out: in-flight message slots (the window stays below)
    MAX_EVENTS = 512
    WBUF_LIMIT = 8388608      # open loop: stop queueing to a socket with 8 MiB unsent
    TICK_NS = 200000          # open loop: the schedule is served every 200 us
    MAX_VARIANTS = 8          # distinct message bodies per sender (the mix scenario)
    MAX_PATTERN = 64          # the order in which a sender cycles through them
    MAX_NODES = 16            # relay nodes the connections are spread over (cfg["ports"])

cdef uint32_t TIMER_IDX = 0xFFFFFFFF

ctypedef struct Conn:
    int fd
    int state
    int partner
    int is_sender
    int want_out
    int in_flush
    int got_group
    char* rbuf
    Py_ssize_t rlen
    Py_ssize_t rcap
    char* wbuf
    Py_ssize_t woff
    Py_ssize_t wlen
    Py_ssize_t wcap
    char* prefix
    int prefix_len
    char* suffix
    int suffix_len
    # message variants (the mix scenario): the frame's tail after the id for variant v is
    # suffix + voff[v] .. + vlen[v]; one buffer per connection holds every variant
    int voff[MAX_VARIANTS]
    int vlen[MAX_VARIANTS]
    int64_t sent
    int64_t rcpt
    int64_t dlv
    int64_t failed

ctypedef struct Hist:
    int64_t* buckets
    int64_t overflow
    int64_t count
    int64_t max_ns
    double sum_ns


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int hist_bucket(int64_t us) noexcept nogil:
    cdef int e
    if us < HIST_LINEAR:
        return <int>us
    e = 63 - __builtin_clzll(<unsigned long long>us) - 9
    return HIST_LINEAR + (e - 1) * HIST_SUB + <int>((us >> e) - HIST_SUB)


cdef inline double bucket_upper_ms(int b) noexcept nogil:
    cdef int e
    cdef int64_t sub
    if b < HIST_LINEAR:
        return (b + 1) / 1000.0
    e = (b - HIST_LINEAR) // HIST_SUB + 1
    sub = (b - HIST_LINEAR) % HIST_SUB + HIST_SUB
    return ((sub + 1) << e) / 1000.0


cdef inline void hist_add(Hist* h, int64_t ns) noexcept nogil:
    cdef int b
    if ns < 0:
        ns = 0
    h.count += 1
    h.sum_ns += ns
    if ns > h.max_ns:
        h.max_ns = ns
    b = hist_bucket(ns // 1000)
    if b < HIST_BUCKETS:
        h.buckets[b] += 1
    else:
        h.overflow += 1


cdef double hist_pct(Hist* h, double q):
    """The q-quantile in milliseconds (its bucket's upper edge, capped at the maximum)."""
    cdef int64_t target, acc = 0
    cdef int i
    cdef double v
    if h.count == 0:
        return -1.0
    target = <int64_t>(q * h.count)
    if target >= h.count:
        target = h.count - 1
    for i in range(HIST_BUCKETS):
        acc += h.buckets[i]
        if acc > target:
            v = bucket_upper_ms(i)
            return min(v, h.max_ns / 1e6)
    return h.max_ns / 1e6


cdef dict hist_summary(Hist* h):
    if h.count == 0:
        return {"count": 0}
    return {
        "count": h.count,
        "mean_ms": h.sum_ns / h.count / 1e6,
        "p50_ms": hist_pct(h, 0.50),
        "p90_ms": hist_pct(h, 0.90),
        "p99_ms": hist_pct(h, 0.99),
        "p999_ms": hist_pct(h, 0.999),
        "max_ms": h.max_ns / 1e6,
    }


cdef inline const char* _json_str(const char* d, Py_ssize_t n, const char* key, int klen,
                                  Py_ssize_t* vlen) noexcept:
    """The string value of "key" in a flat JSON text (NULL when absent)."""
    cdef const char* k = <const char*>memmem(d, n, key, klen)
    cdef const char* e = d + n
    cdef const char* v
    if k == NULL:
        return NULL
    k += klen
    while k < e and (k[0] == b' ' or k[0] == b':'):
        k += 1
    if k >= e or k[0] != b'"':
        return NULL
    v = k + 1
    k = v
    while k < e and k[0] != b'"':
        k += 1
    vlen[0] = k - v
    return v


cdef class LoadGen:
    """One run of one scenario against one server. Build it, call run(snapshot), read the dict."""

    cdef Conn* conns
    cdef int n
    cdef int mode
    cdef int window
    cdef double rate
    cdef int epfd
    cdef int timerfd
    cdef sockaddr_in addr
    cdef bytes handshake
    cdef list auth_frames
    cdef bytes group_frame
    cdef int64_t warmup_ns, duration_ns, drain_ns, setup_timeout_ns, hold_ns
    cdef int connect_concurrency
    cdef int in_progress
    cdef int next_to_connect
    cdef int ready
    cdef int group_ready
    cdef int measuring
    cdef int sending
    cdef uint32_t rng
    # window counters
    cdef int64_t w_sent, w_dlv, w_rcpt, w_failed, w_errors, w_completed
    # whole-run counters
    cdef int64_t t_sent, t_dlv, t_rcpt, t_failed, t_errors, t_closed, t_echo, t_pings, t_unexpected
    cdef int64_t t_blocked
    cdef Hist lat
    cdef Hist aux
    # open loop schedule
    cdef int64_t open_t0
    cdef int64_t open_k
    cdef int* senders
    cdef int n_senders
    # fan-out ring
    cdef int64_t* ring_ts
    cdef int32_t* ring_got
    cdef int64_t fan_completed
    cdef char first_error[256]
    cdef int* flushq
    cdef int nflush
    cdef int have_error
    cdef object _progress
    # Source addresses: connection i binds to 127.0.0.(2 + i / per_source) before connecting,
    # so more connections than one (source, destination) pair's ephemeral ports can exist.
    cdef int per_source
    # idle mode: the last two connections are a canary pair exchanging one message at a time
    # every canary_ns during the hold; its latency is what the idle connections cost others
    cdef int canary
    cdef int64_t canary_ns
    cdef int pattern[MAX_PATTERN]
    cdef int npattern
    # storm mode: connection i (of the n - 2 before the canary pair) connects at
    # connect_at[i] ns after the storm starts (ascending) and expects `backlog` messages
    cdef int64_t* connect_at
    cdef int64_t backlog
    cdef int storm_done
    cdef int64_t storm_last_ns
    # Several nodes (cfg["ports"]): pair p's two members (2p, 2p + 1) connect to
    # ports[(p + member) % nports], so partners are always on different nodes when nports >= 2.
    # nports == 0: every connection to cfg["port"].
    cdef unsigned short node_ports[MAX_NODES]
    cdef int nports

    def __cinit__(self):
        self.conns = NULL
        self.connect_at = NULL
        self.senders = NULL
        self.flushq = NULL
        self.ring_ts = NULL
        self.ring_got = NULL
        self.lat.buckets = NULL
        self.aux.buckets = NULL
        self.epfd = -1
        self.timerfd = -1

    def __init__(self, dict cfg, progress=None):
        cdef int i
        cdef Conn* c
        cdef bytes host = cfg.get("host", "127.0.0.1").encode()
        cdef int port = int(cfg["port"])
        mode_name = cfg["mode"]
        self.mode = {
            "closed": M_CLOSED, "open": M_OPEN, "fanout": M_FANOUT, "idle": M_IDLE, "storm": M_STORM
        }[mode_name]
        self.n = int(cfg["clients"])
        self.window = int(cfg.get("window", 16))
        self.rate = float(cfg.get("rate", 0.0))
        self.warmup_ns = <int64_t>(float(cfg.get("warmup", 1.0)) * 1e9)
        self.duration_ns = <int64_t>(float(cfg.get("duration", 5.0)) * 1e9)
        self.drain_ns = <int64_t>(float(cfg.get("drain", 2.0)) * 1e9)
        self.hold_ns = <int64_t>(float(cfg.get("hold", 1.0)) * 1e9)
        self.setup_timeout_ns = <int64_t>(float(cfg.get("setup_timeout", 60.0)) * 1e9)
        self.connect_concurrency = int(cfg.get("connect_concurrency", 256))
        self.per_source = int(cfg.get("per_source", 0))
        self.canary = 1 if (cfg.get("canary") or self.mode == M_STORM) else 0
        self.backlog = int(cfg.get("backlog", 0))
        self.canary_ns = <int64_t>(float(cfg.get("canary_interval", 0.01)) * 1e9)
        if self.canary and (self.mode not in (M_IDLE, M_STORM) or self.n < 4 or self.n % 2):
            raise ValueError("a canary pair needs idle or storm mode and an even number >= 4")
        self._progress = progress
        self.rng = 0x9E3779B9
        if self.mode == M_FANOUT and self.window >= RING:
            raise ValueError(f"fan-out window must be < {RING}")
        if self.n < 1 or (self.mode in (M_CLOSED, M_OPEN) and self.n % 2):
            raise ValueError("clients must be a positive even number for paired scenarios")

        memset(&self.addr, 0, sizeof(self.addr))
        self.addr.sin_family = AF_INET
        self.addr.sin_port = htons(port)
        if inet_pton(AF_INET, host, &self.addr.sin_addr) != 1:
            raise ValueError(f"not an IPv4 address: {host!r}")
        node_ports = list(cfg.get("ports") or [])
        if len(node_ports) > MAX_NODES or len(node_ports) == 1:
            raise ValueError(f"ports: 2-{MAX_NODES} nodes, or none (every connection to port)")
        self.nports = len(node_ports)
        for i, p in enumerate(node_ports):
            self.node_ports[i] = htons(int(p))
        path = cfg.get("path", "/")
        self.handshake = (
            f"GET {path} HTTP/1.1\r\nHost: {host.decode()}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

        self.conns = <Conn*>calloc(self.n, sizeof(Conn))
        self.lat.buckets = <int64_t*>calloc(HIST_BUCKETS, sizeof(int64_t))
        self.aux.buckets = <int64_t*>calloc(HIST_BUCKETS, sizeof(int64_t))
        self.ring_ts = <int64_t*>calloc(RING, sizeof(int64_t))
        self.ring_got = <int32_t*>calloc(RING, sizeof(int32_t))
        self.senders = <int*>calloc(self.n, sizeof(int))
        self.flushq = <int*>calloc(self.n, sizeof(int))
        if (self.flushq == NULL or self.conns == NULL or self.lat.buckets == NULL or self.aux.buckets == NULL
                or self.ring_ts == NULL or self.ring_got == NULL or self.senders == NULL):
            raise MemoryError()

        # the message bodies a sender cycles through in `pattern` order: JSON members after
        # the addressee, "{text}", "{user}" (the sender) and "{file}" (cfg "files": the sender's
        # uploaded file id) filled in; one plain text by default
        bodies = list(cfg.get("bodies", ['"text":"{text}"']))
        pattern = list(cfg.get("pattern", [0]))
        if not 1 <= len(bodies) <= MAX_VARIANTS or not 1 <= len(pattern) <= MAX_PATTERN:
            raise ValueError(f"1-{MAX_VARIANTS} bodies and a pattern of 1-{MAX_PATTERN} needed")
        if any(not 0 <= v < len(bodies) for v in pattern):
            raise ValueError("the pattern names a body that does not exist")
        self.npattern = len(pattern)
        for i, v in enumerate(pattern):
            self.pattern[i] = v
        prefix = cfg.get("user_prefix", "u")
        files = dict(cfg.get("files") or {})
        text = "x" * int(cfg.get("text_bytes", 100))
        stamp = "2026-02-05T10:30:15Z"
        sender_set = cfg.get("senders", "all")
        group_id = cfg.get("group_id", "bench-group")
        self.auth_frames = []
        self.n_senders = 0
        for i in range(self.n):
            c = &self.conns[i]
            c.fd = -1
            c.state = CS_FREE
            user = f"{prefix}{i}"
            self.auth_frames.append(
                f'{{"type":"auth","userId":"{user}","userName":"{user}","userAvatar":"U",'
                f'"timestamp":"{stamp}"}}'.encode()
            )
            if self.mode == M_CLOSED or self.mode == M_OPEN or (self.canary and i >= self.n - 2):
                c.partner = i ^ 1
                c.is_sender = 1 if (sender_set == "all" or i % 2 == 0) else 0
                if self.mode == M_IDLE or self.mode == M_STORM:
                    c.is_sender = 1 if i == self.n - 2 else 0
                to = f'"recipientId":"{prefix}{c.partner}"'
            elif self.mode == M_FANOUT:
                c.partner = -1
                c.is_sender = 1 if i == 0 else 0
                to = f'"groupId":"{group_id}"'
            else:
                c.partner = -1
                c.is_sender = 0
                to = ""
            if c.is_sender:
                self.senders[self.n_senders] = i
                self.n_senders += 1
                pre = b'{"type":"message","id":"'
                sufs = [
                    (
                        f'","senderId":"{user}","senderName":"{user}","senderAvatar":"U",{to},'
                        + body.replace("{text}", text)
                        .replace("{user}", user)
                        .replace("{file}", files.get(user, ""))
                        + f',"timestamp":"{stamp}","status":"pending"}}'
                    ).encode()
                    for body in bodies
                ]
                suf = b"".join(sufs)
                c.prefix = <char*>malloc(len(pre))
                c.suffix = <char*>malloc(len(suf))
                if c.prefix == NULL or c.suffix == NULL:
                    raise MemoryError()
                memcpy(c.prefix, <char*>pre, len(pre))
                memcpy(c.suffix, <char*>suf, len(suf))
                c.prefix_len = len(pre)
                c.suffix_len = len(suf)
                off = 0
                for v, one in enumerate(sufs):
                    c.voff[v] = off
                    c.vlen[v] = len(one)
                    off += len(one)
        if self.mode == M_STORM:
            times = cfg["connect_at"]
            if len(times) != self.n - 2 or self.backlog < 1:
                raise ValueError("storm needs connect_at for all but the canary pair, backlog >= 1")
            self.connect_at = <int64_t*>calloc(self.n, sizeof(int64_t))
            if self.connect_at == NULL:
                raise MemoryError()
            for i, t in enumerate(sorted(times)):
                self.connect_at[i] = <int64_t>(float(t) * 1e9)
        if self.mode == M_FANOUT:
            members = ",".join(f'"{prefix}{i}"' for i in range(self.n))
            self.group_frame = (
                f'{{"type":"group_create","groupId":"{group_id}","name":"bench",'
                f'"members":[{members}],"ref":"bench"}}'
            ).encode()
        self.first_error[0] = 0
        self.have_error = 0

    def __dealloc__(self):
        cdef int i
        if self.conns != NULL:
            for i in range(self.n):
                if self.conns[i].fd >= 0:
                    close(self.conns[i].fd)
                free(self.conns[i].rbuf)
                free(self.conns[i].wbuf)
                free(self.conns[i].prefix)
                free(self.conns[i].suffix)
            free(self.conns)
        free(self.connect_at)
        free(self.lat.buckets)
        free(self.aux.buckets)
        free(self.ring_ts)
        free(self.ring_got)
        free(self.senders)
        free(self.flushq)
        if self.epfd >= 0:
            close(self.epfd)
        if self.timerfd >= 0:
            close(self.timerfd)

    # ------------------------------------------------------------------ buffers and sockets

    cdef int wreserve(self, Conn* c, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need
        cdef char* nb
        if c.woff > 0 and c.woff == c.wlen:
            c.woff = 0
            c.wlen = 0
        need = c.wlen + extra
        if need <= c.wcap:
            return 0
        if c.woff > 0:
            memmove(c.wbuf, c.wbuf + c.woff, c.wlen - c.woff)
            c.wlen -= c.woff
            c.woff = 0
            need = c.wlen + extra
            if need <= c.wcap:
                return 0
        if c.wcap == 0:
            c.wcap = 4096
        while c.wcap < need:
            c.wcap *= 2
        nb = <char*>realloc(c.wbuf, c.wcap)
        if nb == NULL:
            raise MemoryError()
        c.wbuf = nb
        return 0

    cdef inline uint32_t next_mask(self) noexcept:
        cdef uint32_t x = self.rng
        x ^= x << 13
        x ^= x >> 17
        x ^= x << 5
        self.rng = x
        return x

    cdef int put_frame(self, int idx, int opcode, const char* a, Py_ssize_t alen,
                       const char* b, Py_ssize_t blen, const char* d, Py_ssize_t dlen) except -1:
        """Append one masked client frame whose payload is a + b + d (b, d may be empty)."""
        cdef Conn* c = &self.conns[idx]
        cdef Py_ssize_t plen = alen + blen + dlen
        cdef Py_ssize_t i, j
        cdef uint8_t* p
        cdef uint8_t mk[4]
        cdef uint32_t m = self.next_mask()
        cdef uint64_t m64, w
        self.wreserve(c, plen + 14)
        p = <uint8_t*>(c.wbuf + c.wlen)
        p[0] = 0x80 | opcode
        if plen < 126:
            p[1] = 0x80 | plen
            j = 2
        elif plen < 65536:
            p[1] = 0x80 | 126
            p[2] = (plen >> 8) & 0xFF
            p[3] = plen & 0xFF
            j = 4
        else:
            p[1] = 0x80 | 127
            for i in range(8):
                p[2 + i] = (plen >> (8 * (7 - i))) & 0xFF
            j = 10
        mk[0] = m & 0xFF
        mk[1] = (m >> 8) & 0xFF
        mk[2] = (m >> 16) & 0xFF
        mk[3] = (m >> 24) & 0xFF
        memcpy(p + j, mk, 4)
        j += 4
        p += j
        memcpy(p, a, alen)
        if blen:
            memcpy(p + alen, b, blen)
        if dlen:
            memcpy(p + alen + blen, d, dlen)
        # mask in place, eight bytes at a time (the key repeats every four bytes)
        m64 = (<uint64_t>m << 32) | m
        i = 0
        while i + 8 <= plen:
            memcpy(&w, p + i, 8)
            w ^= m64
            memcpy(p + i, &w, 8)
            i += 8
        while i < plen:
            p[i] ^= mk[i & 3]
            i += 1
        c.wlen += j + plen
        self.mark_flush(idx)
        return 0

    cdef inline void mark_flush(self, int idx) noexcept:
        # Each connection is queued at most once: in_flush is cleared only when dequeued.
        if not self.conns[idx].in_flush:
            self.conns[idx].in_flush = 1
            self.flushq[self.nflush] = idx
            self.nflush += 1

    cdef int set_events(self, int idx, uint32_t events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.u64 = 0
        ev.data.u32 = <uint32_t>idx
        if epoll_ctl(self.epfd, EPOLL_CTL_MOD, self.conns[idx].fd, &ev) != 0:
            self.fail_conn(idx, b"epoll_ctl MOD failed")
        return 0

    cdef int flush(self, int idx) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef ssize_t r
        if c.state == CS_CLOSED or c.state == CS_FREE or c.state == CS_CONNECTING:
            return 0
        while c.woff < c.wlen:
            r = send(c.fd, c.wbuf + c.woff, c.wlen - c.woff, MSG_NOSIGNAL)
            if r > 0:
                c.woff += r
                continue
            if r < 0 and errno == EINTR:
                continue
            if r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK):
                if not c.want_out:
                    c.want_out = 1
                    self.set_events(idx, EPOLLIN | EPOLLOUT)
                return 0
            self.fail_conn(idx, b"send failed")
            return 0
        c.woff = 0
        c.wlen = 0
        if c.want_out:
            c.want_out = 0
            self.set_events(idx, EPOLLIN)
        return 0

    cdef void note_error(self, const char* what, const char* data, Py_ssize_t n) noexcept:
        cdef int k
        if self.have_error:
            return
        self.have_error = 1
        k = snprintf(self.first_error, 256, "%s", what)
        if n > 0 and k < 250:
            if n > 250 - k:
                n = 250 - k
            self.first_error[k] = b':'
            self.first_error[k + 1] = b' '
            memcpy(self.first_error + k + 2, data, n)
            self.first_error[k + 2 + n] = 0

    cdef void fail_conn(self, int idx, const char* why) noexcept:
        cdef Conn* c = &self.conns[idx]
        if c.state == CS_CLOSED:
            return
        if c.state != CS_READY:
            self.in_progress -= 1
        c.state = CS_CLOSED
        self.t_closed += 1
        self.note_error(why, NULL, 0)
        if c.fd >= 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.fd, NULL)
            close(c.fd)
            c.fd = -1

    cdef int start_connect(self, int idx) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef sockaddr_in dest
        cdef int one = 1
        cdef epoll_event ev
        cdef int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            raise OSError(errno, f"socket() failed for connection {idx} (ulimit -n?)")
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        c.fd = fd
        c.state = CS_CONNECTING
        self.in_progress += 1
        if c.rbuf == NULL:
            c.rcap = 16384
            c.rbuf = <char*>malloc(c.rcap)
            if c.rbuf == NULL:
                raise MemoryError()
        ev.events = EPOLLOUT | EPOLLIN
        ev.data.u64 = 0
        ev.data.u32 = <uint32_t>idx
        c.want_out = 1
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl ADD failed")
        if self.per_source > 0:
            self.bind_source(fd, idx)
        dest = self.addr
        if self.nports > 0:
            dest.sin_port = self.node_ports[((idx >> 1) + (idx & 1)) % self.nports]
        if connect(fd, <sockaddr*>&dest, sizeof(dest)) != 0 and errno != EINPROGRESS:
            self.fail_conn(idx, b"connect failed")
        return 0

    cdef int bind_source(self, int fd, int idx) except -1:
        cdef sockaddr_in src
        cdef int one = 1
        cdef int k = 2 + idx // self.per_source
        if k > 254:
            raise ValueError(f"connection {idx} needs source address 127.0.0.{k}")
        memset(&src, 0, sizeof(src))
        src.sin_family = AF_INET
        src.sin_port = 0
        src.sin_addr.s_addr = htonl((127 << 24) | k)
        # the port is chosen at connect() for the (source, destination) pair, not at bind()
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one))
        if bind(fd, <sockaddr*>&src, sizeof(src)) != 0:
            raise OSError(errno, f"bind to 127.0.0.{k} failed for connection {idx}")
        return 0

    cdef int on_connected(self, int idx) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef int err = 0
        cdef socklen_t elen = sizeof(err)
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
        if err != 0:
            self.fail_conn(idx, b"connect refused")
            return 0
        c.state = CS_HANDSHAKE
        self.wreserve(c, len(self.handshake))
        memcpy(c.wbuf + c.wlen, <char*>self.handshake, len(self.handshake))
        c.wlen += len(self.handshake)
        self.flush(idx)
        return 0

    # ------------------------------------------------------------------ receiving

    cdef int on_readable(self, int idx) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef ssize_t r
        cdef char* nb
        while True:
            if c.rlen == c.rcap:
                c.rcap *= 2
                nb = <char*>realloc(c.rbuf, c.rcap)
                if nb == NULL:
                    raise MemoryError()
                c.rbuf = nb
            r = recv(c.fd, c.rbuf + c.rlen, c.rcap - c.rlen, 0)
            if r > 0:
                c.rlen += r
                self.consume(idx, now_ns())
                if c.state == CS_CLOSED:
                    return 0
                if c.rlen < c.rcap:
                    return 0
                continue
            if r == 0:
                self.fail_conn(idx, b"server closed the connection")
                return 0
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == EWOULDBLOCK:
                return 0
            self.fail_conn(idx, b"recv failed")
            return 0

    cdef int consume(self, int idx, int64_t now) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef Py_ssize_t pos = 0, hl, plen
        cdef uint8_t* p
        cdef int op, i
        cdef char* end
        if c.state == CS_HANDSHAKE:
            end = <char*>memmem(c.rbuf, c.rlen, b"\r\n\r\n", 4)
            if end == NULL:
                return 0
            if c.rlen < 12 or memcmp(c.rbuf + 9, b"101", 3) != 0:
                self.note_error(b"handshake refused", c.rbuf, min(c.rlen, 120))
                self.fail_conn(idx, b"handshake refused")
                return 0
            pos = (end - c.rbuf) + 4
            c.state = CS_AUTHING
            af = self.auth_frames[idx]
            self.put_frame(idx, 1, <char*>af, len(af), NULL, 0, NULL, 0)
        while c.rlen - pos >= 2:
            p = <uint8_t*>(c.rbuf + pos)
            op = p[0] & 0x0F
            plen = p[1] & 0x7F
            hl = 2
            if plen == 126:
                if c.rlen - pos < 4:
                    break
                plen = (p[2] << 8) | p[3]
                hl = 4
            elif plen == 127:
                if c.rlen - pos < 10:
                    break
                plen = 0
                for i in range(8):
                    plen = (plen << 8) | p[2 + i]
                hl = 10
            if p[1] & 0x80:
                self.fail_conn(idx, b"server sent a masked frame")
                return 0
            if c.rlen - pos < hl + plen:
                break
            if (p[0] & 0x80) == 0 or op == 0:
                self.note_error(b"fragmented server frame", NULL, 0)
                self.t_unexpected += 1
            elif op == 1:
                self.on_text(idx, <char*>(p + hl), plen, now)
            elif op == 9:
                self.t_pings += 1
                self.put_frame(idx, 10, <char*>(p + hl), plen, NULL, 0, NULL, 0)
            elif op == 8:
                self.note_error(b"server sent close", <char*>(p + hl + 2), plen - 2 if plen > 2 else 0)
                self.fail_conn(idx, b"server sent close")
                return 0
            pos += hl + plen
        if pos > 0:
            if pos < c.rlen:
                memmove(c.rbuf, c.rbuf + pos, c.rlen - pos)
            c.rlen -= pos
        return 0

    cdef inline const char* json_str(self, const char* d, Py_ssize_t n, const char* key,
                                     int klen, Py_ssize_t* vlen) noexcept:
        return _json_str(d, n, key, klen, vlen)

    cdef int on_text(self, int idx, const char* d, Py_ssize_t n, int64_t now) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef Py_ssize_t tl = 0, sl = 0, il = 0, j
        cdef const char* t = self.json_str(d, n, b'"type"', 6, &tl)
        cdef const char* s
        cdef const char* v
        cdef int64_t ts = 0, ctr = 0, slot
        cdef int k
        if t == NULL:
            self.t_unexpected += 1
            return 0
        if tl == 7 and memcmp(t, b"message", 7) == 0:
            v = self.json_str(d, n, b'"id"', 4, &il)
            if v == NULL:
                self.t_unexpected += 1
                return 0
            j = 0
            while j < il and v[j] != b'.':
                ts = ts * 10 + (v[j] - 48)
                j += 1
            j += 1
            while j < il:
                ctr = ctr * 10 + (v[j] - 48)
                j += 1
            self.t_dlv += 1
            if self.measuring:
                self.w_dlv += 1
            if self.mode == M_FANOUT:
                if idx == 0:
                    self.t_echo += 1
                    return 0
                if self.measuring:
                    hist_add(&self.aux, now - ts)
                slot = ctr % RING
                self.ring_got[slot] += 1
                if self.ring_got[slot] == self.n - 1:
                    self.fan_completed += 1
                    if self.measuring:
                        self.w_completed += 1
                        hist_add(&self.lat, now - self.ring_ts[slot])
            elif c.partner >= 0:
                self.conns[c.partner].dlv += 1
                if self.measuring:
                    hist_add(&self.lat, now - ts)
            elif self.mode == M_STORM:
                c.dlv += 1
                if c.dlv == self.backlog:
                    self.storm_done += 1
                    self.storm_last_ns = now
            return 0
        if tl == 7 and memcmp(t, b"receipt", 7) == 0:
            s = self.json_str(d, n, b'"status"', 8, &sl)
            if s != NULL and sl == 4 and memcmp(s, b"sent", 4) == 0:
                c.rcpt += 1
                self.t_rcpt += 1
                if self.measuring:
                    self.w_rcpt += 1
            elif s != NULL and sl == 6 and memcmp(s, b"failed", 6) == 0:
                c.failed += 1
                self.t_failed += 1
                if self.measuring:
                    self.w_failed += 1
                self.note_error(b"failed receipt", d, n)
            return 0
        if tl == 7 and memcmp(t, b"auth_ok", 7) == 0:
            if c.state == CS_AUTHING:
                c.state = CS_READY
                self.ready += 1
                self.in_progress -= 1
            return 0
        if tl == 5 and memcmp(t, b"group", 5) == 0:
            if not c.got_group:
                c.got_group = 1
                self.group_ready += 1
            return 0
        if tl == 5 and memcmp(t, b"error", 5) == 0:
            self.t_errors += 1
            if self.measuring:
                self.w_errors += 1
            self.note_error(b"error frame", d, n)
            return 0
        return 0   # presence, pong, typing: not what this benchmark measures

    # ------------------------------------------------------------------ sending

    cdef int send_message(self, int idx, int64_t now) except -1:
        cdef Conn* c = &self.conns[idx]
        cdef char idbuf[48]
        cdef int il
        cdef int64_t ctr = c.sent
        cdef int v = self.pattern[ctr % self.npattern]
        if self.mode == M_FANOUT:
            self.ring_ts[ctr % RING] = now
            self.ring_got[ctr % RING] = 0
        il = snprintf(idbuf, 48, "%lld.%lld", <long long>now, <long long>ctr)
        self.put_frame(idx, 1, c.prefix, c.prefix_len, idbuf, il, c.suffix + c.voff[v], c.vlen[v])
        c.sent += 1
        self.t_sent += 1
        if self.measuring:
            self.w_sent += 1
        return 0

    cdef int refill_closed(self, int64_t now) except -1:
        cdef int s, idx
        cdef Conn* c
        cdef int64_t done, out
        for s in range(self.n_senders):
            idx = self.senders[s]
            c = &self.conns[idx]
            if c.state != CS_READY:
                continue
            if self.mode == M_FANOUT:
                done = self.fan_completed if self.fan_completed < c.rcpt else c.rcpt
            else:
                done = c.dlv if c.dlv < c.rcpt else c.rcpt
            out = c.sent - done - c.failed
            while out < self.window:
                self.send_message(idx, now)
                out += 1
        return 0

    def run_storm(self, snapshot, dict result):
        """The canary pair connects first; then each other client connects at its scheduled
        time and authenticates, and the relay sends it its backlog. Ends when every backlog
        arrived (or at setup_timeout). Samples the server's RSS every 50 ms for its peak."""
        cdef int64_t t0, now, deadline, next_canary, next_sample
        cdef int storm_n = self.n - 2
        cdef int i
        # the canary pair, alone first
        for i in range(storm_n, self.n):
            self.start_connect(i)
        deadline = now_ns() + self.setup_timeout_ns
        while self.ready + self.t_closed < 2:
            self.poll_once(5)
            self.flush_all()
            if now_ns() > deadline:
                raise RuntimeError(f"the canary pair did not authenticate ({self.error_text()})")
        before = snapshot()
        peak = before["server_rss_kb"]
        self.measuring = 1
        self.next_to_connect = 0
        t0 = now_ns()
        next_canary = t0
        next_sample = t0
        deadline = t0 + self.setup_timeout_ns
        while self.storm_done + self.t_closed < storm_n:
            now = now_ns()
            if now > deadline:
                break
            while (self.next_to_connect < storm_n
                   and self.connect_at[self.next_to_connect] <= now - t0
                   and self.in_progress < self.connect_concurrency):
                self.start_connect(self.next_to_connect)
                self.next_to_connect += 1
            if now >= next_canary:
                self.canary_step(now)
                next_canary = now + self.canary_ns
            if now >= next_sample:
                sample = snapshot()
                if sample["server_rss_kb"] > peak:
                    peak = sample["server_rss_kb"]
                next_sample = now + 50000000
            self.poll_once(1)
            self.flush_all()
        self.measuring = 0
        after = snapshot()
        if after["server_rss_kb"] > peak:
            peak = after["server_rss_kb"]
        result.update(self.common())
        result.update(
            storm_clients=storm_n,
            backlog_each=self.backlog,
            backlogs_complete=self.storm_done,
            # from the first scheduled connect to the last backlog's last message
            storm_s=((self.storm_last_ns - t0) / 1e9) if self.storm_done == storm_n else None,
            schedule_s=self.connect_at[storm_n - 1] / 1e9,
            peak_rss_kb=peak,
            canary=hist_summary(&self.lat),
            canary_sent=self.conns[storm_n].sent,
            before=before,
            after=after,
            window_s=after["t"] - before["t"],
        )
        self.shutdown()
        return result

    cdef int canary_step(self, int64_t now) except -1:
        """Send the canary's next message if its previous one arrived (one in flight)."""
        cdef int idx = self.n - 2
        cdef Conn* c = &self.conns[idx]
        if c.state == CS_READY and c.sent == c.dlv:
            self.send_message(idx, now)
        return 0

    cdef int refill_open(self, int64_t now) except -1:
        cdef int64_t due = <int64_t>((now - self.open_t0) * self.rate / 1e9)
        cdef int idx
        cdef Conn* c
        if due > self.open_k:
            # how late the oldest due message is: the generator's own schedule slip
            hist_add(&self.aux, now - (self.open_t0 + <int64_t>((self.open_k + 1) * 1e9 / self.rate)))
        while self.open_k < due:
            idx = self.senders[self.open_k % self.n_senders]
            self.open_k += 1
            c = &self.conns[idx]
            if c.state != CS_READY or c.wlen - c.woff > WBUF_LIMIT:
                self.t_blocked += 1
                continue
            self.send_message(idx, now)
        return 0

    # ------------------------------------------------------------------ the loop

    cdef int poll_once(self, int timeout_ms) except -1:
        cdef epoll_event evs[MAX_EVENTS]
        cdef int n, i, idx
        cdef uint32_t e
        cdef uint64_t expirations
        cdef Conn* c
        with nogil:
            n = epoll_wait(self.epfd, evs, MAX_EVENTS, timeout_ms)
        if n < 0:
            if errno == EINTR:
                return 0
            raise OSError(errno, "epoll_wait failed")
        for i in range(n):
            idx = <int>evs[i].data.u32
            e = evs[i].events
            if evs[i].data.u32 == TIMER_IDX:
                read(self.timerfd, &expirations, 8)
                continue
            c = &self.conns[idx]
            if c.state == CS_CLOSED:
                continue
            if c.state == CS_CONNECTING:
                if e & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                    self.on_connected(idx)
                continue
            if e & (EPOLLIN | EPOLLERR | EPOLLHUP):
                self.on_readable(idx)
            if c.state != CS_CLOSED and (e & EPOLLOUT):
                self.flush(idx)
        return 0

    cdef int flush_all(self) except -1:
        """Write out every connection that queued frames since the last call."""
        cdef int i, idx
        cdef int n = self.nflush
        self.nflush = 0
        for i in range(n):
            idx = self.flushq[i]
            self.conns[idx].in_flush = 0
            self.flush(idx)
        return 0

    cdef int connect_all(self) except -1:
        """Connect and authenticate every client, at most connect_concurrency at a time."""
        cdef int64_t deadline = now_ns() + self.setup_timeout_ns
        while self.ready + self.t_closed < self.n:
            while self.next_to_connect < self.n and self.in_progress < self.connect_concurrency:
                self.start_connect(self.next_to_connect)
                self.next_to_connect += 1
            self.poll_once(5)
            self.flush_all()
            if now_ns() > deadline:
                break
        if self.ready < self.n:
            raise RuntimeError(
                f"only {self.ready} of {self.n} clients authenticated "
                f"({self.t_closed} closed; first error: {self.error_text()})"
            )
        return 0

    def error_text(self):
        return self.first_error.decode("utf-8", "replace") if self.have_error else None

    def _say(self, msg):
        if self._progress is not None:
            self._progress(msg)

    def run(self, snapshot):
        """Run the scenario; `snapshot()` is called at the window boundaries (and, for idle,
        before connecting and after the hold). Returns every figure as a dict."""
        cdef int64_t t_start, t_ready, t_group = 0, w0, w1, t_end, deadline, now, next_canary
        cdef itimerspec its
        cdef int i
        cdef int64_t backlog_end = 0, backlog_start = 0
        self.epfd = epoll_create1(0)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        result = {}
        if self.mode == M_STORM:
            return self.run_storm(snapshot, result)
        if self.mode == M_IDLE:
            before = snapshot()
        t_start = now_ns()
        self.connect_all()
        t_ready = now_ns()
        result["connect_s"] = (t_ready - t_start) / 1e9
        result["connect_rate"] = self.n / max((t_ready - t_start) / 1e9, 1e-9)
        self._say(f"{self.n} clients connected and authenticated in {(t_ready - t_start) / 1e9:.2f} s")

        if self.mode == M_IDLE:
            deadline = now_ns() + self.hold_ns
            self.measuring = self.canary
            next_canary = now_ns()
            while True:
                now = now_ns()
                if now >= deadline:
                    break
                if self.canary and now >= next_canary:
                    self.canary_step(now)
                    next_canary = now + self.canary_ns
                self.poll_once(1 if self.canary else 10)
                self.flush_all()
            self.measuring = 0
            after = snapshot()
            if self.canary:
                result["canary"] = hist_summary(&self.lat)
                result["canary_sent"] = self.conns[self.n - 2].sent
            result.update(self.common())
            result["before"] = before
            result["after"] = after
            result["window_s"] = (after["t"] - before["t"])
            self.shutdown()
            return result

        if self.mode == M_FANOUT:
            gf = self.group_frame
            self.put_frame(0, 1, <char*>gf, len(gf), NULL, 0, NULL, 0)
            self.flush_all()
            deadline = now_ns() + self.setup_timeout_ns
            while self.group_ready < self.n:
                self.poll_once(5)
                self.flush_all()
                if now_ns() > deadline:
                    raise RuntimeError(
                        f"only {self.group_ready} of {self.n} members saw the group "
                        f"(first error: {self.error_text()})"
                    )
            t_group = now_ns()
            result["group_setup_s"] = (t_group - t_ready) / 1e9

        if self.mode == M_OPEN:
            self.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            its.it_interval.tv_sec = 0
            its.it_interval.tv_nsec = TICK_NS
            its.it_value.tv_sec = 0
            its.it_value.tv_nsec = TICK_NS
            timerfd_settime(self.timerfd, 0, &its, NULL)
            self.add_timer()
            self.open_t0 = now_ns()

        # warm-up, then the measured window
        self.sending = 1
        deadline = now_ns() + self.warmup_ns
        self.loop_until(deadline)
        before = snapshot()
        self.measuring = 1
        memset(self.lat.buckets, 0, HIST_BUCKETS * sizeof(int64_t))
        memset(self.aux.buckets, 0, HIST_BUCKETS * sizeof(int64_t))
        self.lat.count = self.lat.overflow = self.lat.max_ns = 0
        self.lat.sum_ns = 0
        self.aux.count = self.aux.overflow = self.aux.max_ns = 0
        self.aux.sum_ns = 0
        w0 = now_ns()
        backlog_start = self.t_sent - self.t_dlv_equiv()
        self._say(f"measuring for {self.duration_ns / 1e9:.1f} s")
        self.loop_until(w0 + self.duration_ns)
        w1 = now_ns()
        self.measuring = 0
        after = snapshot()
        backlog_end = self.t_sent - self.t_dlv_equiv()
        # drain: stop sending, wait for what is in flight
        self.sending = 0
        deadline = now_ns() + self.drain_ns
        while now_ns() < deadline and self.t_dlv_equiv() < self.t_sent:
            self.poll_once(5)
            self.flush_all()
        t_end = now_ns()
        window = (w1 - w0) / 1e9
        result.update(self.common())
        result.update(
            window_s=window,
            before=before,
            after=after,
            sent=self.w_sent,
            delivered=self.w_dlv,
            receipts=self.w_rcpt,
            failed=self.w_failed,
            errors=self.w_errors,
            sent_per_s=self.w_sent / window,
            delivered_per_s=self.w_dlv / window,
            receipts_per_s=self.w_rcpt / window,
            backlog_at_start=backlog_start,
            backlog_at_end=backlog_end,
            undelivered_after_drain=self.t_sent - self.t_dlv_equiv(),
            latency=hist_summary(&self.lat),
        )
        if self.mode == M_FANOUT:
            result["messages_completed"] = self.w_completed
            result["messages_per_s"] = self.w_completed / window
            result["delivery_latency"] = hist_summary(&self.aux)
        if self.mode == M_OPEN:
            result["offered_per_s"] = self.rate
            result["send_lag"] = hist_summary(&self.aux)
            result["blocked_sends"] = self.t_blocked
        self.shutdown()
        return result

    cdef int64_t t_dlv_equiv(self):
        """Messages fully delivered so far (fan-out: delivered to every member)."""
        if self.mode == M_FANOUT:
            return self.fan_completed + self.t_failed
        return self.t_dlv + self.t_failed

    cdef dict common(self):
        return {
            "clients": self.n,
            "ready": self.ready,
            "closed": self.t_closed,
            "total_sent": self.t_sent,
            "total_delivered": self.t_dlv,
            "total_receipts": self.t_rcpt,
            "total_failed": self.t_failed,
            "total_errors": self.t_errors,
            "unexpected_frames": self.t_unexpected,
            "pings_answered": self.t_pings,
            "echoes": self.t_echo,
            "first_error": self.error_text(),
        }

    cdef int add_timer(self) except -1:
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = 0
        ev.data.u32 = TIMER_IDX
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.timerfd, &ev) != 0:
            raise OSError(errno, "epoll_ctl ADD timerfd failed")
        return 0

    cdef int loop_until(self, int64_t deadline) except -1:
        cdef int64_t now = now_ns()
        while now < deadline:
            if self.mode == M_OPEN:
                self.poll_once(1)
                now = now_ns()
                if self.sending:
                    self.refill_open(now)
                self.flush_all()
            else:
                self.poll_once(2)
                now = now_ns()
                if self.sending:
                    self.refill_closed(now)
                self.flush_all()
            now = now_ns()
        return 0

    cdef int shutdown(self) except -1:
        """Close every socket with SO_LINGER 0 (RST): no TIME_WAIT pile-up across runs."""
        cdef linger lg
        cdef int i
        lg.l_onoff = 1
        lg.l_linger = 0
        for i in range(self.n):
            if self.conns[i].fd >= 0:
                setsockopt(self.conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
                close(self.conns[i].fd)
                self.conns[i].fd = -1
                self.conns[i].state = CS_CLOSED
        return 0


# ---------------------------------------------------------------------------------------------
# NullRelay: the cheapest server that speaks what the load generator needs, to measure the
# load generator's own ceiling (`python -m bench --calibrate`). Not a relay: no store, no
# validation, users are told apart by the number their id ends with.

cdef enum:
    NR_MAX_FD = 65536
    NR_MAX_USERS = 65536

ctypedef struct NConn:
    int open
    int upgraded
    int user
    int dirty
    char* rbuf
    Py_ssize_t rlen
    Py_ssize_t rcap
    char* wbuf
    Py_ssize_t wlen
    Py_ssize_t wcap


cdef inline int trailing_int(const char* v, Py_ssize_t n) noexcept:
    cdef int x = 0, mul = 1
    cdef Py_ssize_t i = n - 1
    while i >= 0 and v[i] >= 48 and v[i] <= 57:
        x += (v[i] - 48) * mul
        mul *= 10
        i -= 1
    return x


cdef class NullRelay:
    cdef NConn* conns
    cdef int* user_fd
    cdef int* group
    cdef int group_n
    cdef int lfd
    cdef int epfd
    cdef int* dirtyq
    cdef int ndirty
    cdef public int port
    cdef char* scratch
    cdef Py_ssize_t scap

    def __cinit__(self):
        self.conns = <NConn*>calloc(NR_MAX_FD, sizeof(NConn))
        self.user_fd = <int*>malloc(NR_MAX_USERS * sizeof(int))
        self.group = <int*>calloc(NR_MAX_USERS, sizeof(int))
        self.dirtyq = <int*>calloc(NR_MAX_FD, sizeof(int))
        self.scap = 1 << 20
        self.scratch = <char*>malloc(self.scap)
        if (self.conns == NULL or self.user_fd == NULL or self.group == NULL
                or self.dirtyq == NULL or self.scratch == NULL):
            raise MemoryError()
        memset(self.user_fd, 0xFF, NR_MAX_USERS * sizeof(int))
        self.lfd = -1
        self.epfd = -1

    def __dealloc__(self):
        cdef int i
        if self.conns != NULL:
            for i in range(NR_MAX_FD):
                free(self.conns[i].rbuf)
                free(self.conns[i].wbuf)
            free(self.conns)
        free(self.user_fd)
        free(self.group)
        free(self.dirtyq)
        free(self.scratch)

    def listen(self, str host="127.0.0.1"):
        cdef sockaddr_in a
        cdef socklen_t alen = sizeof(a)
        cdef int one = 1
        cdef epoll_event ev
        cdef bytes h = host.encode()
        memset(&a, 0, sizeof(a))
        a.sin_family = AF_INET
        a.sin_port = 0
        inet_pton(AF_INET, h, &a.sin_addr)
        self.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        setsockopt(self.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))
        if bind(self.lfd, <sockaddr*>&a, sizeof(a)) != 0 or listen(self.lfd, 4096) != 0:
            raise OSError(errno, "bind/listen failed")
        getsockname(self.lfd, <sockaddr*>&a, &alen)
        self.port = ntohs(a.sin_port)
        self.epfd = epoll_create1(0)
        ev.events = EPOLLIN
        ev.data.u64 = 0
        ev.data.u32 = TIMER_IDX
        epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.lfd, &ev)
        return self.port

    cdef int out(self, int fd, const char* a, Py_ssize_t alen, const char* b, Py_ssize_t blen,
                 const char* d, Py_ssize_t dlen) except -1:
        """Queue one unmasked text frame a + b + d to fd."""
        cdef NConn* c = &self.conns[fd]
        cdef Py_ssize_t plen = alen + blen + dlen
        cdef Py_ssize_t need = c.wlen + plen + 10
        cdef uint8_t* p
        cdef int j
        if not c.open:
            return 0
        if need > c.wcap:
            c.wcap = max(need, 2 * c.wcap, 4096)
            c.wbuf = <char*>realloc(c.wbuf, c.wcap)
            if c.wbuf == NULL:
                raise MemoryError()
        p = <uint8_t*>(c.wbuf + c.wlen)
        p[0] = 0x81
        if plen < 126:
            p[1] = <uint8_t>plen
            j = 2
        elif plen < 65536:
            p[1] = 126
            p[2] = (plen >> 8) & 0xFF
            p[3] = plen & 0xFF
            j = 4
        else:
            p[1] = 127
            for i in range(8):
                p[2 + i] = (plen >> (8 * (7 - i))) & 0xFF
            j = 10
        memcpy(p + j, a, alen)
        if blen:
            memcpy(p + j + alen, b, blen)
        if dlen:
            memcpy(p + j + alen + blen, d, dlen)
        c.wlen += j + plen
        if not c.dirty:
            c.dirty = 1
            self.dirtyq[self.ndirty] = fd
            self.ndirty += 1
        return 0

    cdef void drop(self, int fd) noexcept:
        cdef NConn* c = &self.conns[fd]
        if c.open:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
            close(fd)
            c.open = 0
            c.upgraded = 0
            c.rlen = 0
            c.wlen = 0
            if c.user >= 0 and self.user_fd[c.user] == fd:
                self.user_fd[c.user] = -1

    cdef int on_text(self, int fd, const char* d, Py_ssize_t n) except -1:
        cdef Py_ssize_t tl = 0, vl = 0
        cdef const char* t = _json_str(d, n, b'"type"', 6, &tl)
        cdef const char* v
        cdef const char* m
        cdef const char* e
        cdef int u, k, to
        if t == NULL:
            return 0
        if tl == 4 and memcmp(t, b"auth", 4) == 0:
            v = _json_str(d, n, b'"userId"', 8, &vl)
            if v == NULL:
                return 0
            u = trailing_int(v, vl) % NR_MAX_USERS
            self.conns[fd].user = u
            self.user_fd[u] = fd
            self.out(fd, b'{"type":"auth_ok","userId":"', 28, v, vl, b'"}', 2)
        elif tl == 7 and memcmp(t, b"message", 7) == 0:
            v = _json_str(d, n, b'"id"', 4, &vl)
            if v == NULL:
                return 0
            self.out(fd, b'{"type":"receipt","id":"', 24, v, vl, b'","status":"sent","seq":1}', 26)
            v = _json_str(d, n, b'"recipientId"', 13, &vl)
            if v != NULL:
                to = self.user_fd[trailing_int(v, vl) % NR_MAX_USERS]
                if to >= 0:
                    self.out(to, d, n, NULL, 0, NULL, 0)
            else:
                for k in range(self.group_n):
                    to = self.user_fd[self.group[k]]
                    if to >= 0 and to != fd:
                        self.out(to, d, n, NULL, 0, NULL, 0)
        elif tl == 12 and memcmp(t, b"group_create", 12) == 0:
            m = <const char*>memmem(d, n, b'"members"', 9)
            if m == NULL:
                return 0
            e = d + n
            self.group_n = 0
            while m < e and m[0] != b']':
                if m[0] == b'"' and m + 1 < e and m[1] != b':' and m[1] != b']':
                    v = m + 1
                    m = v
                    while m < e and m[0] != b'"':
                        m += 1
                    if memcmp(v, b"members", 7) != 0 and self.group_n < NR_MAX_USERS:
                        self.group[self.group_n] = trailing_int(v, m - v) % NR_MAX_USERS
                        self.group_n += 1
                m += 1
            for k in range(self.group_n):
                to = self.user_fd[self.group[k]]
                if to >= 0:
                    self.out(to, b'{"type":"group","groupId":"g"}', 30, NULL, 0, NULL, 0)
        return 0

    cdef int consume(self, int fd) except -1:
        cdef NConn* c = &self.conns[fd]
        cdef Py_ssize_t pos = 0, hl, plen, i
        cdef uint8_t* p
        cdef uint8_t* mk
        cdef char* end
        cdef int op
        if not c.upgraded:
            end = <char*>memmem(c.rbuf, c.rlen, b"\r\n\r\n", 4)
            if end == NULL:
                return 0
            pos = (end - c.rbuf) + 4
            c.upgraded = 1
            resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            if c.wlen + len(resp) > c.wcap:
                c.wcap = max(c.wlen + len(resp), 4096)
                c.wbuf = <char*>realloc(c.wbuf, c.wcap)
            memcpy(c.wbuf + c.wlen, <char*>resp, len(resp))
            c.wlen += len(resp)
            if not c.dirty:
                c.dirty = 1
                self.dirtyq[self.ndirty] = fd
                self.ndirty += 1
        while c.rlen - pos >= 6:
            p = <uint8_t*>(c.rbuf + pos)
            op = p[0] & 0x0F
            plen = p[1] & 0x7F
            hl = 2
            if plen == 126:
                if c.rlen - pos < 8:
                    break
                plen = (p[2] << 8) | p[3]
                hl = 4
            elif plen == 127:
                if c.rlen - pos < 14:
                    break
                plen = 0
                for i in range(8):
                    plen = (plen << 8) | p[2 + i]
                hl = 10
            if c.rlen - pos < hl + 4 + plen:
                break
            mk = p + hl
            if plen > self.scap:
                self.drop(fd)
                return 0
            for i in range(plen):
                self.scratch[i] = p[hl + 4 + i] ^ mk[i & 3]
            if op == 1:
                self.on_text(fd, self.scratch, plen)
            elif op == 8:
                self.drop(fd)
                return 0
            pos += hl + 4 + plen
        if pos > 0:
            memmove(c.rbuf, c.rbuf + pos, c.rlen - pos)
            c.rlen -= pos
        return 0

    def serve(self):
        """Serve until SIGINT (KeyboardInterrupt) or the process is killed."""
        cdef epoll_event evs[MAX_EVENTS]
        cdef epoll_event ev
        cdef int n, i, fd, k
        cdef ssize_t r
        cdef NConn* c
        cdef int one = 1
        while True:
            with nogil:
                n = epoll_wait(self.epfd, evs, MAX_EVENTS, 100)
            if PyErr_CheckSignals() != 0:
                return  # SIGINT: KeyboardInterrupt propagates
            for i in range(n):
                if evs[i].data.u32 == TIMER_IDX:
                    while True:
                        fd = accept4(self.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                        if fd < 0:
                            break
                        if fd >= NR_MAX_FD:
                            close(fd)
                            continue
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
                        c = &self.conns[fd]
                        c.open = 1
                        c.upgraded = 0
                        c.user = -1
                        c.rlen = 0
                        c.wlen = 0
                        if c.rbuf == NULL:
                            c.rcap = 65536
                            c.rbuf = <char*>malloc(c.rcap)
                        ev.events = EPOLLIN
                        ev.data.u64 = 0
                        ev.data.u32 = <uint32_t>fd
                        epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev)
                    continue
                fd = <int>evs[i].data.u32
                c = &self.conns[fd]
                if not c.open:
                    continue
                if c.rlen == c.rcap:
                    c.rcap *= 2
                    c.rbuf = <char*>realloc(c.rbuf, c.rcap)
                r = recv(fd, c.rbuf + c.rlen, c.rcap - c.rlen, 0)
                if r > 0:
                    c.rlen += r
                    self.consume(fd)
                elif r == 0 or (errno != EAGAIN and errno != EINTR):
                    self.drop(fd)
            # one blocking-free send per connection per loop; the rest is dropped if the
            # socket is full (calibration only: the load generator never fills it)
            k = self.ndirty
            self.ndirty = 0
            for i in range(k):
                fd = self.dirtyq[i]
                c = &self.conns[fd]
                c.dirty = 0
                if c.open and c.wlen > 0:
                    r = send(fd, c.wbuf, c.wlen, MSG_NOSIGNAL)
                    if r > 0 and r < c.wlen:
                        memmove(c.wbuf, c.wbuf + r, c.wlen - r)
                        c.wlen -= r
                        c.dirty = 1
                        self.dirtyq[self.ndirty] = fd
                        self.ndirty += 1
                    elif r < 0 and errno != EAGAIN:
                        self.drop(fd)
                    else:
                        if r == c.wlen:
                            c.wlen = 0
                        elif not c.dirty:
                            c.dirty = 1
                            self.dirtyq[self.ndirty] = fd
                            self.ndirty += 1
