// Voice calls in the web chat (contract v2, "Calls"): the relay carries the signalling
// (call_invite / call_ringing / call_accept / call_reject / call_end / call_signal); the sound
// flows between the two browsers over a WebRTC RTCPeerConnection with the microphone from
// getUserMedia and the STUN/TURN servers of auth_ok.
// Invariants:
// - One call at a time on this page; its phase only moves forward:
//   calling|incoming -> ringing (caller) -> connecting -> connected -> ended.
// - ICE candidates are sent as they come (trickle) in call_signal; those that arrive before the
//   remote description is set wait in `early` and are added right after it.
// - Ending a call (any way) stops the microphone's tracks and closes the connection.
"use strict";

(function (root) {
  const ORDER = { calling: 0, incoming: 0, ringing: 1, connecting: 2, connected: 3, ended: 4 };
  const END_TEXT = {
    unavailable: "not reachable", busy: "busy", answered_elsewhere: "answered on another device",
    rejected: "declined", hangup: "ended", timeout: "no answer", dropped: "connection lost",
    local: "ended", failed: "could not connect", media: "no microphone",
  };

  function newCallId() {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    return "call-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** A call controller. `send(frame)` writes a frame (false when offline); `iceServers()` the
   * list of the current auth_ok; `onChange()` re-renders; `audio` plays the peer. */
  function create({ send, iceServers, onChange, audio }) {
    let call = null; // {callId, peerId, peerName, outgoing, phase, reason, pc, stream, early, remoteSet, offer, connectedAt}

    function setPhase(phase, reason) {
      if (!call || ORDER[phase] < ORDER[call.phase] || call.phase === "ended") return;
      call.phase = phase;
      if (phase === "connected" && !call.connectedAt) call.connectedAt = Date.now();
      if (reason) call.reason = reason;
      onChange();
    }

    function teardown(reason) {
      if (!call || call.phase === "ended") return;
      if (call.stream) for (const t of call.stream.getTracks()) t.stop();
      if (call.pc) call.pc.close();
      audio.srcObject = null;
      call.phase = "ended";
      call.reason = reason;
      call.endedAt = Date.now();
      onChange();
    }

    function peerConnection() {
      const pc = new RTCPeerConnection({ iceServers: iceServers() || [] });
      const id = call.callId;
      pc.onicecandidate = (e) => {
        if (!e.candidate || !call || call.callId !== id) return;
        const c = e.candidate;
        send({ type: "call_signal", callId: id, payload: { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex } });
      };
      pc.ontrack = (e) => {
        if (e.streams && e.streams[0]) audio.srcObject = e.streams[0];
      };
      const watch = () => {
        if (!call || call.callId !== id) return;
        const ice = pc.iceConnectionState;
        if (pc.connectionState === "connected" || ice === "connected" || ice === "completed") setPhase("connected");
        else if (pc.connectionState === "failed") { end("failed"); return; }
        onChange();
      };
      pc.onconnectionstatechange = watch;
      pc.oniceconnectionstatechange = watch;
      return pc;
    }

    async function microphone() {
      return navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    }

    async function addEarly() {
      call.remoteSet = true;
      for (const p of call.early.splice(0)) await addCandidate(p);
    }

    async function addCandidate(p) {
      if (!p || typeof p.candidate !== "string") return;
      try {
        await call.pc.addIceCandidate({ candidate: p.candidate, sdpMid: p.sdpMid, sdpMLineIndex: p.sdpMLineIndex });
      } catch (e) { /* a candidate the browser cannot use: the others may still connect */ }
    }

    /** Call `peerId` (audio). Resolves once the invite is sent; failures end the call. */
    async function place(peerId, peerName) {
      if (call && call.phase !== "ended") return;
      call = { callId: newCallId(), peerId, peerName: peerName || peerId, outgoing: true, phase: "calling", early: [], remoteSet: false };
      onChange();
      const mine = call;
      try {
        mine.stream = await microphone();
      } catch (e) {
        if (call === mine) teardown("media");
        return;
      }
      if (call !== mine || mine.phase === "ended") { for (const t of mine.stream.getTracks()) t.stop(); return; }
      try {
        mine.pc = peerConnection();
        for (const t of mine.stream.getTracks()) mine.pc.addTrack(t, mine.stream);
        await mine.pc.setLocalDescription(await mine.pc.createOffer());
      } catch (e) {
        if (call === mine) teardown("failed"); // nothing was sent: the relay knows no call
        return;
      }
      if (call !== mine || mine.phase === "ended") return;
      if (!send({ type: "call_invite", callId: mine.callId, peerId, media: "audio", sdp: mine.pc.localDescription.sdp })) {
        teardown("unavailable");
      }
    }

    async function answer() {
      if (!call || call.outgoing || call.phase !== "incoming") return;
      const mine = call;
      setPhase("connecting");
      try {
        mine.stream = await microphone();
      } catch (e) {
        send({ type: "call_reject", callId: mine.callId });
        teardown("media");
        return;
      }
      if (call !== mine || mine.phase === "ended") { for (const t of mine.stream.getTracks()) t.stop(); return; }
      try {
        mine.pc = peerConnection();
        await mine.pc.setRemoteDescription({ type: "offer", sdp: mine.offer });
        for (const t of mine.stream.getTracks()) mine.pc.addTrack(t, mine.stream);
        await mine.pc.setLocalDescription(await mine.pc.createAnswer());
      } catch (e) {
        // An offer this browser cannot take: decline, so the caller is not left ringing.
        if (call === mine && mine.phase !== "ended") {
          send({ type: "call_reject", callId: mine.callId });
          teardown("failed");
        }
        return;
      }
      if (call !== mine || mine.phase === "ended") return;
      send({ type: "call_accept", callId: mine.callId, sdp: mine.pc.localDescription.sdp });
      await addEarly();
    }

    function reject() {
      if (!call || call.outgoing || call.phase !== "incoming") return;
      send({ type: "call_reject", callId: call.callId });
      teardown("rejected");
    }

    // This side ends the call: the relay tells the other side (hangup).
    function end(reason) {
      if (!call || call.phase === "ended") return;
      send({ type: "call_end", callId: call.callId });
      teardown(reason);
    }

    function hangUp() {
      end("local");
    }

    // Frames of the relay about calls; true when the frame was one.
    function handle(f) {
      switch (f.type) {
        case "call_invite":
          if (call && call.phase !== "ended") {
            // This page is busy with another call: decline, the relay tells the caller.
            send({ type: "call_reject", callId: f.callId });
            return true;
          }
          call = {
            callId: f.callId, peerId: f.callerId, peerName: f.callerName || f.callerId, outgoing: false,
            phase: "incoming", offer: f.sdp, media: f.media, early: [], remoteSet: false,
          };
          onChange();
          return true;
        case "call_ringing":
          if (call && call.callId === f.callId) setPhase("ringing");
          return true;
        case "call_accept":
          if (call && call.callId === f.callId && call.outgoing && call.pc) {
            setPhase("connecting");
            const mine = call;
            mine.pc.setRemoteDescription({ type: "answer", sdp: f.sdp })
              .then(() => { if (call === mine) return addEarly(); return undefined; })
              .catch(() => { if (call === mine) end("failed"); });
          }
          return true;
        case "call_signal":
          if (call && call.callId === f.callId && f.payload) {
            if (call.remoteSet && call.pc) addCandidate(f.payload); else call.early.push(f.payload);
          }
          return true;
        case "call_end":
          if (call && call.callId === f.callId) teardown(f.reason || "hangup");
          return true;
        case "error":
          // A refused call frame (the relay echoes no callId on every error): end a call that
          // has not started yet rather than leave it ringing forever.
          if (call && f.field === "callId" && (call.phase === "calling" || call.phase === "ringing")) teardown("failed");
          return false;
        default:
          return false;
      }
    }

    /** The connection dropped: the relay ends this device's calls too (reason dropped). */
    function disconnected() {
      teardown("dropped");
    }

    function state() {
      if (!call) return null;
      return {
        callId: call.callId, peerId: call.peerId, peerName: call.peerName, outgoing: call.outgoing,
        phase: call.phase, reason: call.reason || null, connectedAt: call.connectedAt || null,
        endedAt: call.endedAt || null,
        connectionState: call.pc ? call.pc.connectionState : null,
        iceConnectionState: call.pc ? call.pc.iceConnectionState : null,
      };
    }

    /** Audio packets received from the peer so far (0 without a connection). */
    async function packetsReceived() {
      if (!call || !call.pc) return 0;
      let n = 0;
      (await call.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") n += r.packetsReceived || 0; });
      return n;
    }

    /** The candidate pair the connection uses: {local, remote}, each {address, port,
     * candidateType, protocol} (candidateType "relay": through a TURN server); null before. */
    async function route() {
      if (!call || !call.pc) return null;
      const stats = await call.pc.getStats();
      let pair = null;
      stats.forEach((r) => {
        if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
      });
      if (!pair) return null;
      const side = (id) => {
        const c = stats.get(id);
        return c ? { address: c.address, port: c.port, candidateType: c.candidateType, protocol: c.protocol } : null;
      };
      return { local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId) };
    }

    return { place, answer, reject, hangUp, handle, disconnected, state, packetsReceived, route };
  }

  /** The line a call record shows: {"callId","media","outcome","durationMs"}. */
  function recordText(rec, mine) {
    const kind = rec.media === "video" ? "Video call" : "Voice call";
    const secs = Math.round((rec.durationMs || 0) / 1000);
    const dur = Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0");
    switch (rec.outcome) {
      case "answered": return kind + " · " + dur;
      case "missed": return mine ? kind + " · no answer" : "Missed " + kind.toLowerCase();
      case "rejected": return kind + " · declined";
      case "busy": return kind + " · busy";
      case "unavailable": return kind + " · not reachable";
      default: return kind;
    }
  }

  root.RelayCalls = Object.freeze({ create, recordText, END_TEXT });
})(globalThis);
