"""A Cinder volume driver for the test cloud: Cinder's own fake driver, with no-op image↔volume copies.

`FakeLoggingVolumeDriver` handles blank volumes and attachments, but inherits the LVM driver's image
copy, which writes to a device through rootwrap; booting from a volume made from an image then fails.
"""

from cinder.tests import fake_driver
from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class TestVolumeDriver(fake_driver.FakeLoggingVolumeDriver):
    def copy_image_to_volume(self, context, volume, image_service, image_id, disable_sparse=False):
        LOG.info("test driver: image %s to volume %s (no data copied)", image_id, volume.id)

    def copy_image_to_encrypted_volume(self, context, volume, image_service, image_id, disable_sparse=False):
        LOG.info("test driver: image %s to encrypted volume %s (no data copied)", image_id, volume.id)

    def copy_volume_to_image(self, context, volume, image_service, image_meta):
        LOG.info("test driver: volume %s to image %s (1 KiB of zeros)", volume.id, image_meta["id"])
        image_service.update(context, image_meta["id"], {}, data=b"\0" * 1024)
