"""What people do with detections in media files: videos (:mod:`~srn.media.video`) and
anonymisation (:mod:`~srn.media.anonymize`).
"""
