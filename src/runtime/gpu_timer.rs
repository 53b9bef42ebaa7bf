//! GPU time of an actor's work items, from CUDA timing events on the actor's stream.
//!
//! Each work item is bracketed by two timing events recorded on the actor's stream. Their host
//! time comes from one reference event recorded (and waited for) when the timer is created, next
//! to an `Instant`: start = reference instant + elapsed(reference, start event). The start event
//! is recorded after the waits on the inputs' events, so a span begins when the stream reached the
//! item's first kernel's position, i.e. once its inputs were ready on the GPU. Events are read
//! lazily (`poll`, never blocking the actor) and at the end (`flush`).

use super::actor::Event;
use crate::cuda::{CudaEvent, CudaStream};
use anyhow::Result;
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(super) struct GpuTimer {
    track: String,
    reference: CudaEvent,
    host: Instant,
    pending: VecDeque<(String, CudaEvent, CudaEvent)>,
}

impl GpuTimer {
    /// None on the host stream (CPU actors have no GPU time).
    pub(super) fn new(track: &str, stream: &CudaStream) -> Result<Option<GpuTimer>> {
        if stream.is_host() {
            return Ok(None);
        }
        let mut reference = CudaEvent::new(true)?;
        reference.record(stream)?;
        reference.synchronize()?;
        Ok(Some(GpuTimer {
            track: track.to_string(),
            reference,
            host: Instant::now(),
            pending: VecDeque::new(),
        }))
    }

    /// Records the start event of a work item.
    pub(super) fn start(stream: &CudaStream) -> Result<CudaEvent> {
        let mut e = CudaEvent::new(true)?;
        e.record(stream)?;
        Ok(e)
    }

    /// Records the end event of the item started with `start`.
    pub(super) fn end(
        &mut self,
        name: String,
        start: CudaEvent,
        stream: &CudaStream,
    ) -> Result<()> {
        let mut e = CudaEvent::new(true)?;
        e.record(stream)?;
        self.pending.push_back((name, start, e));
        Ok(())
    }

    /// Sends the spans whose end event completed (in order; stops at the first one still running).
    pub(super) fn poll(&mut self, events: Option<&Sender<Event>>) -> Result<()> {
        while let Some((_, _, end)) = self.pending.front() {
            if !end.query()? {
                break;
            }
            self.emit_front(events)?;
        }
        Ok(())
    }

    /// Waits for every pending span and sends it.
    pub(super) fn flush(&mut self, events: Option<&Sender<Event>>) -> Result<()> {
        while let Some((_, _, end)) = self.pending.front() {
            end.synchronize()?;
            self.emit_front(events)?;
        }
        Ok(())
    }

    fn emit_front(&mut self, events: Option<&Sender<Event>>) -> Result<()> {
        let Some((name, start, end)) = self.pending.pop_front() else {
            return Ok(());
        };
        let offset_ms = self.reference.elapsed_ms(&start)?.max(0.0);
        let secs = start.elapsed_ms(&end)?.max(0.0) / 1e3;
        if let Some(tx) = events {
            let _ = tx.send(Event::GpuBusy {
                track: self.track.clone(),
                name,
                start: self.host + Duration::from_secs_f64(offset_ms / 1e3),
                secs,
            });
        }
        Ok(())
    }
}
