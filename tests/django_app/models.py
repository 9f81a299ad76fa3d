from __future__ import annotations

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=50, unique=True)


class Profile(models.Model):
    author = models.OneToOneField(Author, models.CASCADE, related_name="profile")
    bio = models.CharField(max_length=100)


class Tag(models.Model):
    name = models.CharField(max_length=50)


class Post(models.Model):
    title = models.CharField(max_length=100)
    author = models.ForeignKey(Author, models.CASCADE, related_name="posts")
    editor = models.ForeignKey(Author, models.SET_NULL, null=True, related_name="edited")
    tags = models.ManyToManyField(Tag, related_name="posts")


class Comment(models.Model):
    post = models.ForeignKey(Post, models.CASCADE, related_name="comments")
    author = models.ForeignKey(Author, models.CASCADE, related_name="comments")
    body = models.CharField(max_length=100)
