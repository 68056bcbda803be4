"""`affordance-clip bag`: recorded rosbag2 files through the model, offline and without ROS.

* ``reader``: a bag's messages in recording order, up to where a killed recording is damaged
* ``types``: the rosbags typestore with this package's messages, registered from msg/*.msg
* ``pairing``: colour frames with their depth image and CameraInfo, as the node pairs them
* ``convert``: batches through the model, results into the output bag
* ``video``: the overlays as an MP4 at the recording's frame rate
* ``command``: the subcommand
"""
