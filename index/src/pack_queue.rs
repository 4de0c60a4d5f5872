//! The packer's queue: object versions stored as uploaded, waiting to be re-encoded into packs.

use crate::encoding::encode;
use crate::{decode, Index, PackJob, Result};

impl Index {
    /// The oldest pending pack job, if any.
    pub fn next_pack_job(&self) -> Result<Option<PackJob>> {
        self.queue.iter().next().transpose()?.map(|(_, v)| decode(&v)).transpose()
    }

    /// Queues an object version for the packer (an object stored as uploaded, found again by
    /// `index rebuild`).
    pub fn enqueue_pack(&self, job: &PackJob) -> Result<()> {
        self.queue.insert(job.version.as_bytes(), encode(job)?)?;
        Ok(())
    }

    /// Removes a finished (or obsolete) pack job.
    pub fn finish_pack_job(&self, job: &PackJob) -> Result<()> {
        self.queue.remove(job.version.as_bytes())?;
        self.flush()
    }

    pub fn pack_queue_len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_records::fresh_index;
    use crate::PackJob;

    #[test]
    fn jobs_come_out_in_version_order_until_finished() {
        let (_dir, index) = fresh_index();
        let job = |version: &str| PackJob { tenant: "t".into(), bucket: "b".into(), key: "k".into(), version: version.into() };
        index.enqueue_pack(&job("v2")).unwrap();
        index.enqueue_pack(&job("v1")).unwrap();
        assert_eq!(index.pack_queue_len(), 2);
        assert_eq!(index.next_pack_job().unwrap(), Some(job("v1")));
        index.finish_pack_job(&job("v1")).unwrap();
        assert_eq!(index.next_pack_job().unwrap(), Some(job("v2")));
        index.finish_pack_job(&job("v2")).unwrap();
        assert_eq!(index.next_pack_job().unwrap(), None);
    }
}
